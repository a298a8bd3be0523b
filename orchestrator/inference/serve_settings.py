"""What `orchestrate serve` needs before its app exists: the defaults of its limits, how it hands its
settings to worker processes, and the check that its port is free.

Standard library only, so that `orchestrate serve --help` and the CLI's option table never import
fastapi (half a second); the app itself is orchestrator.inference.serve.
"""
import errno
import socket

from ..errors import UserError

DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # a request body; a phone photo is 2-8 MB, base64 adds a third
DEFAULT_MAX_PIXELS = 50_000_000       # an image, by its header: a 50-megapixel photo decodes to 150 MB
# How `orchestrate serve --workers N` hands its settings to worker processes, which uvicorn starts
# from an import string (serve.app_from_environment) rather than from an app object.
CONFIG_ENV = "ORCHESTRATE_SERVE_CONFIG"


def check_port_free(host, port):
    """UserError when host:port cannot be listened on, so the user gets one line, not uvicorn's log.

    SO_REUSEADDR as uvicorn sets it: a port left in TIME_WAIT by a previous server counts as free.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is already in use (choose another with --port)") from None
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
