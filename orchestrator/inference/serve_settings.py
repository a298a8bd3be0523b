"""What `orchestrate serve` needs before its app exists: the defaults of its limits, the Host names it
answers to, how it hands its settings to worker processes, and the check that its port is free.

Standard library only, so that `orchestrate serve --help` and the CLI's option table never import
fastapi (half a second); the app itself is orchestrator.inference.serve.
"""
import errno
import ipaddress
import socket

from ..errors import UsageError

DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # a request body; a phone photo is 2-8 MB, base64 adds a third
DEFAULT_MAX_PIXELS = 50_000_000       # an image, by its header: a 50-megapixel photo decodes to 150 MB
DEFAULT_MAX_CONNECTIONS = 64          # per process: benchmarks/serve.py's 8 clients many times over
DEFAULT_READ_TIMEOUT = 60.0           # seconds for a request's headers, then for its body: 20 MB at 3 Mbit/s
# Names of this machine no web site can point elsewhere: the Host check admits them by default.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
EVERY_INTERFACE = ("0.0.0.0", "::", "")
# How `orchestrate serve --workers N` hands its settings to worker processes, which uvicorn starts
# from an import string (serve.app_from_environment) rather than from an app object.
CONFIG_ENV = "ORCHESTRATE_SERVE_CONFIG"


def check_port_free(host, port):
    """UsageError when host:port cannot be listened on, so the user gets one line, not uvicorn's log.

    SO_REUSEADDR as uvicorn sets it: a port left in TIME_WAIT by a previous server counts as free.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is already in use (choose another with --port)") from None
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def trusted_hosts(bind_host, allowed=()):
    """The Host header values the service answers: loopback names, the address it listens on, `allowed`.

    Why check at all: a web page can point a name of its own at 127.0.0.1 (DNS rebinding) and then
    make the visitor's browser post to the service as if same-origin; only the Host header gives
    that away. A wildcard bind address is not a name clients use, so it adds nothing: the machine's
    other names must be allowed by the user. "*" admits every Host (behind a proxy that checks it),
    "*.example.com" a domain's subdomains; anything else with a "*" is a UsageError, as is a port.
    """
    hosts = list(LOOPBACK_HOSTS)
    if bind_host not in EVERY_INTERFACE:
        hosts.append(bracketed(bind_host))
    for name in allowed:
        if name != "*" and "*" in name and not (name.startswith("*.") and "*" not in name[2:]):
            raise UsageError(f"--allowed-host {name!r}: a wildcard is '*' alone or leads a domain: '*.example.com'")
        host = bracketed(name)
        if ":" in host and not host.startswith("["):
            raise UsageError(f"--allowed-host {name!r}: give the name without a port")
        hosts.append(host)
    return list(dict.fromkeys(host.lower() for host in hosts))


def bracketed(host):
    """An IPv6 address as a Host header writes it ([::1]); any other name unchanged."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host
