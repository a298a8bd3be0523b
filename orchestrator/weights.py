"""Put the published ImageNet weights of an --arch into the torch hub cache, without torch.

Why the client fetches them: `--weights imagenet` is the default, yet a Docker container has no
network, an Azure workspace may have no outbound access, and the client has no torch. torch hub
loads <hub dir>/checkpoints/<file name> when it exists instead of downloading, so the file put
there here is what the job's torchvision loader uses: in a local process directly, in a container
through the read-only mount of the host's hub cache, on Azure as an uploaded job input.

HTTPS with urllib (proxies from the usual https_proxy variables). A mirror must be https too, unless
the user opts in to plain http for one they trust, and a redirect to another scheme is refused: the
hash is the only other check, and where no whole digest is published it is the 8 hex digits of the
file name, which whoever sits between client and server can match. The file is streamed to a
temporary file beside its final name and renamed only once its sha256 is the published one
(weights_catalog.expected_sha256), so an interrupted or corrupt download never looks like a cached
file.
"""
import base64
import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from pathlib import Path

from remote_scripts import weights_catalog as catalog
from remote_scripts.atomic import write_atomically
from remote_scripts.options import given_value

from .errors import UsageError
from .events import ignore, transfer
from .secrets import redact

# A mirror of the published files (a corporate artifact store, or a test server): the base URL
# under which the same file names are served.
BASE_URL_ENV = "ORCHESTRATE_WEIGHTS_URL"
# Set to 1: the mirror may be plain http:// (a test server, an internal store without TLS).
ALLOW_HTTP_ENV = "ORCHESTRATE_WEIGHTS_ALLOW_HTTP"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30  # per connection attempt and per read: a stalled transfer fails instead of hanging

def wanted_imagenet_arch(train_args):
    """The --arch whose published ImageNet weights the job will load, or None (--weights none|PATH)."""
    if given_value(train_args, "--weights") != "imagenet":
        return None
    return given_value(train_args, "--arch")


def hub_dir():
    """torch.hub.get_dir() without torch: $TORCH_HOME/hub, TORCH_HOME defaulting to
    $XDG_CACHE_HOME/torch and XDG_CACHE_HOME to ~/.cache (the same rule, to the character, so the
    job run by the same user finds the file)."""
    torch_home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(torch_home)) / "hub"


def cached_weights_path(arch):
    """Where torch hub keeps (and the job looks for) the ImageNet weights of `arch`."""
    return hub_dir() / "checkpoints" / catalog.IMAGENET1K_V1[arch].file_name


def ensure_imagenet_weights(arch, on_progress=None):
    """The path of `arch`'s ImageNet weights in the torch hub cache, downloaded first if missing.

    on_progress(done_bytes, total_bytes or None) is called as the download proceeds (not at all on
    a cache hit). Raises UsageError, in one line that says how to proceed offline, when the file
    cannot be fetched, is not the published file, or cannot be written.
    """
    return ensure_hub_file(catalog.IMAGENET1K_V1[arch].file_name, on_progress)


def fetch_imagenet_weights(train_args, on_event=ignore):
    """Put the ImageNet weights a job with `train_args` will load into this machine's torch hub
    cache, reporting the download as transfer events: a container has no network and a workspace
    may have no outbound access, so the client fetches them. Nothing to do for --weights none|PATH."""
    arch = wanted_imagenet_arch(train_args)
    if arch is None:
        return
    what = f"{arch} ImageNet weights"
    ensure_imagenet_weights(arch, lambda done, total: on_event(transfer(what, done, total)))


def ensure_hub_file(file_name, on_progress=None):
    """The path of the weights file `file_name` (name-<sha256 prefix>.pth) in the torch hub cache,
    fetched from the base URL (catalog.BASE_URL, or $ORCHESTRATE_WEIGHTS_URL) when missing."""
    path = hub_dir() / "checkpoints" / file_name
    if path.is_file():
        return path
    url = (os.environ.get(BASE_URL_ENV) or catalog.BASE_URL).rstrip("/") + "/" + file_name
    expected = catalog.expected_sha256(file_name)
    offline = (f"Offline? Train with --weights none (random initialization) or --weights PATH (a "
               f"state_dict file), or put {file_name} at {path} (or name a mirror in {BASE_URL_ENV})")
    shown = redact(_without_credentials(url))  # no mirror password or token in a message
    schemes = allowed_schemes()
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in schemes:
        opt_in = f" (or set {ALLOW_HTTP_ENV}=1 for a plain http mirror you trust)" if scheme == "http" else ""
        raise UsageError(f"{BASE_URL_ENV} must be an https:// URL, not {shown}{opt_in}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: _download(url, tmp, expected, on_progress, schemes))
    except _Unreachable as exc:
        raise UsageError(f"cannot download {shown}: {exc}. {offline}") from None
    except _Redirected as exc:
        raise UsageError(f"{shown} redirects to {exc}, which is refused: weights are fetched over "
                        f"{' or '.join(schemes)} only; nothing was kept") from None
    except _Corrupt as exc:
        what = "is not" if len(expected) == len(exc.digest) else "does not start with"
        raise UsageError(f"{shown} is not the published file (its sha256 {exc} {what} "
                        f"{expected}); nothing was kept. {offline}") from None
    except OSError as exc:  # the cache folder: read-only, full, not a folder
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}. {offline}") from None
    return path


def allowed_schemes():
    """The URL schemes a weights download may use, redirects included: https, and http too where
    the user opted in with ORCHESTRATE_WEIGHTS_ALLOW_HTTP=1."""
    return ("https", "http") if os.environ.get(ALLOW_HTTP_ENV) == "1" else ("https",)


class _Unreachable(Exception):
    """The server did not answer, refused, or broke the transfer off: the reason, in one line."""


class _Corrupt(Exception):
    """The whole body arrived, but its sha256 is not the published one. The message shows enough
    of it to compare; .digest holds all of it."""

    def __init__(self, digest, shown):
        super().__init__(shown)
        self.digest = digest


class _Redirected(Exception):
    """The server redirected to a scheme not allowed. The message names that scheme and host only:
    the rest of a redirect's URL may carry a signed token."""


class _SchemeGuard(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling, except that a redirect to a scheme not in `schemes` is refused
    (urllib's own follows https to http, and names a file:// target in full in an HTTPError)."""

    def __init__(self, schemes):
        self.schemes = schemes

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        target = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, location or ""))
        if location and target.scheme.lower() not in self.schemes:
            fp.close()
            raise _Redirected(f"{target.scheme}://{target.hostname or ''}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _download(url, tmp, expected, on_progress, schemes):
    """Stream `url` into the file `tmp`, following redirects to `schemes` only; raise _Corrupt
    unless its sha256 starts with `expected` (is `expected`, when that is a whole digest)."""
    digest = hashlib.sha256()
    with open(tmp, "wb") as out:
        try:  # a new opener: the https_proxy/no_proxy variables as they are now
            response = urllib.request.build_opener(_SchemeGuard(schemes)).open(_request(url), timeout=TIMEOUT_S)
        except (OSError, HTTPException, ValueError) as exc:  # ValueError: a malformed mirror URL
            raise _Unreachable(_reason(exc)) from None
        with response:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, HTTPException) as exc:  # reset, timeout, IncompleteRead
                    raise _Unreachable(_reason(exc)) from None
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if on_progress:
                    on_progress(done, total)
    got = digest.hexdigest()
    if not got.startswith(expected):
        raise _Corrupt(got, got if len(expected) == len(got) else got[:len(expected) + 4] + "...")


def _request(url):
    """A GET of `url`; a mirror's user:password in it (urllib would take it for a port) goes as
    HTTP Basic authorization instead."""
    parts = urllib.parse.urlsplit(url)
    request = urllib.request.Request(_without_credentials(url))
    if parts.username is not None:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        # unredirected: a redirect to another host does not carry the credentials along
        request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    return request


def _without_credentials(url):
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _reason(exc):
    """One line saying why a transfer failed: 'HTTP 404 Not Found', '[Errno 111] Connection refused'."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = str(exc.reason)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact(" ".join(text.split()))
