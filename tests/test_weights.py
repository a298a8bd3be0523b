"""Pretrained weights everywhere: the torch-free catalogue, the client's download into the torch hub
cache (against a real http.server on 127.0.0.1), and what the job and the CLI make of them."""
import base64
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch
import torchvision

from conftest import REPO, run_cli
from imagegen import make_dataset
from orchestrator import weights
from orchestrator.errors import UsageError
from remote_scripts import models, options, weights_catalog

PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache of this test's own; requests to 127.0.0.1 go straight there."""
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A real HTTP server on 127.0.0.1 serving tmp/mirror/models/, named by ORCHESTRATE_WEIGHTS_URL.

    Records each request's path and Authorization header.
    """
    root = tmp_path / "mirror"
    (root / "models").mkdir(parents=True)
    requests = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append((self.path, self.headers.get("Authorization")))
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/models/"
    monkeypatch.setenv(weights.BASE_URL_ENV, base)
    monkeypatch.setenv(weights.ALLOW_HTTP_ENV, "1")  # plain http: the user's opt-in
    yield SimpleNamespace(folder=root / "models", requests=requests, base=base, port=server.server_port)
    server.shutdown()
    server.server_close()


@pytest.fixture
def https_mirror(tmp_path, monkeypatch):
    """A real HTTPS server on 127.0.0.1 (its self-signed certificate trusted through SSL_CERT_FILE,
    which OpenSSL reads), serving tmp/https/models/ and answering the paths in .redirects with a
    302 to the given Location. Records each request's path."""
    from test_azure_storage import self_signed_certificate

    root = tmp_path / "https"
    (root / "models").mkdir(parents=True)
    cert, key = self_signed_certificate(root)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    requests, redirects = [], {}

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            if self.path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"https://127.0.0.1:{server.server_port}/models/"
    monkeypatch.setenv(weights.BASE_URL_ENV, base)
    yield SimpleNamespace(folder=root / "models", requests=requests, redirects=redirects, base=base)
    server.shutdown()
    server.server_close()


def publish(folder, stem, content):
    """Put `content` in `folder` under torch hub's name for it: stem-<sha256 prefix>.pth."""
    name = f"{stem}-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    (folder / name).write_bytes(content)
    return name


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_files(torch_home):
    folder = torch_home / "hub" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# the catalogue ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", options.ARCHS)
def test_catalogue_entry_is_the_file_the_installed_torchvision_loads(arch):
    published = weights_catalog.IMAGENET1K_V1[arch]
    enum = getattr(torchvision.models, published.enum).IMAGENET1K_V1
    assert weights_catalog.url(arch) == enum.url
    assert weights_catalog.sha256_prefix(published.file_name) == torch.hub.HASH_REGEX.search(enum.url).group(1)


@pytest.mark.parametrize("arch", options.ARCHS)
def test_a_whole_digest_in_the_catalogue_begins_with_the_prefix_its_file_name_carries(arch):
    published = weights_catalog.IMAGENET1K_V1[arch]
    prefix = weights_catalog.sha256_prefix(published.file_name)
    if published.sha256 is None:
        assert weights_catalog.expected_sha256(published.file_name) == prefix
    else:
        assert len(published.sha256) == 64 and set(published.sha256) <= set("0123456789abcdef")
        assert published.sha256.startswith(prefix)
        assert weights_catalog.expected_sha256(published.file_name) == published.sha256


def test_every_arch_the_job_offers_has_published_weights():
    assert set(weights_catalog.IMAGENET1K_V1) == set(options.ARCHS) == set(models.ARCHS)


def test_the_client_side_of_the_weights_imports_no_torch():
    code = "import sys, orchestrator.weights, remote_scripts.weights_catalog; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("env", [{"TORCH_HOME": "/opt/th"}, {"TORCH_HOME": "~/th"}, {"XDG_CACHE_HOME": "/var/xdg"},
                                 {}])
def test_hub_dir_is_torchs(env, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert str(weights.hub_dir()) == torch.hub.get_dir()


def test_the_jobs_offline_message_names_the_cache_file_of_the_catalogue(tmp_path, monkeypatch):
    """A hub folder that cannot be created fails at once, as offline does, without any network."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "a-file" / "torch"))
    with pytest.raises(models.WeightsError) as exc:
        models.load_weights("resnet18", "imagenet")
    assert f"put that file at {tmp_path}/a-file/torch/hub/checkpoints/resnet18-f37072fd.pth)" in str(exc.value)


# the download ----------------------------------------------------------------------------------
def test_download_lands_where_torch_hub_looks_with_progress(torch_home, mirror):
    content = os.urandom(3 * weights.CHUNK_BYTES + 12345)  # several chunks
    name = publish(mirror.folder, "net", content)
    seen = []
    path = weights.ensure_hub_file(name, lambda done, total: seen.append((done, total)))
    assert str(path) == os.path.join(torch.hub.get_dir(), "checkpoints", name)
    assert path.read_bytes() == content
    assert hub_files(torch_home) == [name]  # no temporary file left beside it
    assert seen[-1] == (len(content), len(content)) and len(seen) == 4
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert mirror.requests == [(f"/models/{name}", None)]


def test_a_cached_file_is_used_without_a_request(torch_home, mirror):
    name = publish(mirror.folder, "net", b"weights")
    first = weights.ensure_hub_file(name)
    seen = []
    assert weights.ensure_hub_file(name, lambda *progress: seen.append(progress)) == first
    assert len(mirror.requests) == 1 and seen == []


def test_imagenet_weights_already_in_the_cache_need_no_network(torch_home, monkeypatch):
    cached = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"put here by hand")
    monkeypatch.setenv(weights.BASE_URL_ENV, f"http://127.0.0.1:{closed_port()}/")
    assert weights.ensure_imagenet_weights("resnet18") == cached == weights.cached_weights_path("resnet18")


def test_a_file_whose_hash_does_not_match_its_name_is_refused_and_not_kept(torch_home, mirror):
    (mirror.folder / "efficientnet_b0_rwightman-7f5810bc.pth").write_bytes(b"not the published weights")
    with pytest.raises(UsageError) as exc:
        weights.ensure_imagenet_weights("efficientnet_b0")
    message = str(exc.value)
    assert message.startswith(f"{mirror.base}efficientnet_b0_rwightman-7f5810bc.pth is not the published file "
                              "(its sha256 ")
    assert "does not start with 7f5810bc); nothing was kept" in message
    assert "--weights none" in message and "--weights PATH" in message and "\n" not in message
    assert f"at {torch_home}/hub/checkpoints/efficientnet_b0_rwightman-7f5810bc.pth" in message
    assert hub_files(torch_home) == []


def test_a_whole_published_digest_is_checked_beyond_the_names_prefix(torch_home, mirror, monkeypatch):
    """Where the catalogue knows the whole sha256, a file that matches only the 8 hex digits of its
    name (which a forger can find in minutes) is refused; the published file is kept."""
    content = b"the published file"
    name = publish(mirror.folder, "net", content)
    digest = hashlib.sha256(content).hexdigest()
    forged_record = weights_catalog.PublishedWeights("Net_Weights", name, digest[:8] + "0" * 56)
    monkeypatch.setitem(weights_catalog.IMAGENET1K_V1, "net", forged_record)  # as if published so
    with pytest.raises(UsageError) as exc:
        weights.ensure_hub_file(name)
    assert f"(its sha256 {digest} is not {digest[:8]}{'0' * 56}); nothing was kept" in str(exc.value)
    assert hub_files(torch_home) == []
    monkeypatch.setitem(weights_catalog.IMAGENET1K_V1, "net", forged_record._replace(sha256=digest))
    assert weights.ensure_hub_file(name).read_bytes() == content


def test_the_published_resnet18_file_is_checked_by_its_whole_digest(torch_home, mirror):
    (mirror.folder / "resnet18-f37072fd.pth").write_bytes(b"not the published resnet18 weights")
    with pytest.raises(UsageError, match=r"\(its sha256 [0-9a-f]{64} is not f37072fd47e89c5e827621c5baffa75"):
        weights.ensure_imagenet_weights("resnet18")


def test_a_plain_http_mirror_needs_the_users_opt_in(torch_home, mirror, monkeypatch):
    name = publish(mirror.folder, "net", b"weights")
    monkeypatch.delenv(weights.ALLOW_HTTP_ENV)
    with pytest.raises(UsageError) as exc:
        weights.ensure_hub_file(name)
    assert str(exc.value) == (f"{weights.BASE_URL_ENV} must be an https:// URL, not {mirror.base}{name} (or set "
                              f"{weights.ALLOW_HTTP_ENV}=1 for a plain http mirror you trust)")
    assert mirror.requests == [] and hub_files(torch_home) == []
    monkeypatch.setenv(weights.ALLOW_HTTP_ENV, "1")
    assert weights.ensure_hub_file(name).read_bytes() == b"weights"


@pytest.mark.parametrize("base", ["file:///srv/models/", "ftp://127.0.0.1/models/"])
def test_a_mirror_of_another_scheme_is_refused_even_with_the_http_opt_in(torch_home, monkeypatch, base):
    monkeypatch.setenv(weights.BASE_URL_ENV, base)
    monkeypatch.setenv(weights.ALLOW_HTTP_ENV, "1")
    with pytest.raises(UsageError, match=f"^{weights.BASE_URL_ENV} must be an https:// URL, not {base}net-"):
        weights.ensure_hub_file("net-0123abcd.pth")


def test_an_https_mirror_needs_no_opt_in(torch_home, https_mirror):
    name = publish(https_mirror.folder, "net", b"weights over tls")
    assert weights.ensure_hub_file(name).read_bytes() == b"weights over tls"
    assert https_mirror.requests == [f"/models/{name}"]


def test_a_redirect_from_https_to_plain_http_is_refused(torch_home, https_mirror, mirror, monkeypatch):
    name = publish(mirror.folder, "net", b"weights")
    https_mirror.redirects[f"/models/{name}"] = f"{mirror.base}{name}?sig=s3cret-token"
    monkeypatch.setenv(weights.BASE_URL_ENV, https_mirror.base)  # the mirror fixture named its own
    monkeypatch.delenv(weights.ALLOW_HTTP_ENV)
    with pytest.raises(UsageError) as exc:
        weights.ensure_hub_file(name)
    assert str(exc.value) == (f"{https_mirror.base}{name} redirects to http://127.0.0.1, which is refused: "
                              "weights are fetched over https only; nothing was kept")
    assert mirror.requests == [] and hub_files(torch_home) == []


def test_a_redirect_to_a_file_url_is_refused_in_one_line(torch_home, https_mirror, monkeypatch):
    https_mirror.redirects["/models/net-0123abcd.pth"] = "file:///etc/passwd"
    monkeypatch.setenv(weights.ALLOW_HTTP_ENV, "1")
    with pytest.raises(UsageError) as exc:
        weights.ensure_hub_file("net-0123abcd.pth")
    assert str(exc.value) == (f"{https_mirror.base}net-0123abcd.pth redirects to file://, which is refused: "
                              "weights are fetched over https or http only; nothing was kept")
    assert hub_files(torch_home) == []


def test_server_down_is_one_line_that_says_how_to_go_on_offline(torch_home, monkeypatch):
    port = closed_port()
    monkeypatch.setenv(weights.ALLOW_HTTP_ENV, "1")
    monkeypatch.setenv(weights.BASE_URL_ENV, f"http://127.0.0.1:{port}/models")  # no trailing slash
    with pytest.raises(UsageError) as exc:
        weights.ensure_imagenet_weights("resnet50")
    message = str(exc.value)
    assert message.startswith(f"cannot download http://127.0.0.1:{port}/models/resnet50-0676ba61.pth: ")
    assert "Connection refused" in message and "\n" not in message
    assert "Offline? Train with --weights none (random initialization) or --weights PATH" in message
    assert f"put resnet50-0676ba61.pth at {torch_home}/hub/checkpoints/resnet50-0676ba61.pth" in message
    assert hub_files(torch_home) == []


def test_missing_file_on_the_mirror_is_named_by_its_http_status(torch_home, mirror):
    with pytest.raises(UsageError, match=r"resnet34-b627a593\.pth: HTTP 404 File not found\. Offline\?"):
        weights.ensure_imagenet_weights("resnet34")


def test_mirror_credentials_go_as_basic_auth_and_never_into_a_message(torch_home, mirror, monkeypatch):
    name = publish(mirror.folder, "net", b"weights")
    monkeypatch.setenv(weights.BASE_URL_ENV, f"http://reader:s3cr%40t@127.0.0.1:{mirror.port}/models/")
    weights.ensure_hub_file(name)
    assert mirror.requests[-1] == (f"/models/{name}", "Basic " + base64.b64encode(b"reader:s3cr@t").decode())
    with pytest.raises(UsageError) as exc:
        weights.ensure_imagenet_weights("resnet34")  # not on the mirror
    assert "s3cr" not in str(exc.value) and "reader" not in str(exc.value)
    assert f"cannot download http://127.0.0.1:{mirror.port}/models/resnet34-b627a593.pth: HTTP 404" in str(exc.value)


def test_an_unwritable_cache_is_a_user_error(tmp_path, monkeypatch, mirror):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "a-file"))
    with pytest.raises(UsageError, match=r"^cannot write .*/a-file/hub/checkpoints/net-.*: Not a directory\. "):
        weights.ensure_hub_file(publish(mirror.folder, "net", b"weights"))


def test_which_weights_the_job_will_load():
    assert weights.wanted_imagenet_arch([]) == "resnet50"
    assert weights.wanted_imagenet_arch(["--balance", "--arch", "resnet18", "--epochs", "2"]) == "resnet18"
    assert weights.wanted_imagenet_arch(["--weights", "imagenet", "--arch", "efficientnet_b0"]) == "efficientnet_b0"
    assert weights.wanted_imagenet_arch(["--weights", "none"]) is None
    assert weights.wanted_imagenet_arch(["--weights", "/w.pt", "--arch", "resnet18"]) is None


# the CLI ---------------------------------------------------------------------------------------
def test_train_fails_before_any_run_exists_when_the_weights_cannot_be_fetched(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=4)
    env = {"TORCH_HOME": str(tmp_path / "torch"), weights.BASE_URL_ENV: f"http://127.0.0.1:{closed_port()}/",
           weights.ALLOW_HTTP_ENV: "1",
           **{name: "" for name in PROXY_VARIABLES}}
    result = run_cli("train", data, "--backend", "local", "--arch", "resnet18", "--runs-dir", tmp_path / "runs",
                     env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot download" in lines[0] and "--weights none" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_train_on_the_local_backend_uses_the_cached_imagenet_weights(tmp_path, mirror):
    """The default --weights imagenet: the client finds the file in the hub cache (no request), and
    the job loads that very file through torchvision."""
    torch_home = tmp_path / "torch"
    cached = torch_home / "hub" / "checkpoints" / weights_catalog.IMAGENET1K_V1["resnet18"].file_name
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    data = make_dataset(tmp_path / "data", per_class=6)
    result = run_cli("train", data, "--backend", "local", "--arch", "resnet18", "--image-size", "32",
                     "--epochs", "1", "--workers", "0", "--runs-dir", tmp_path / "runs", "--json",
                     env={"TORCH_HOME": str(torch_home), **{name: "" for name in PROXY_VARIABLES}})
    assert result.returncode == 0, result.stderr
    assert mirror.requests == []


def test_azure_export_with_weights_upload_sends_the_cached_imagenet_file(tmp_path, mirror):
    torch_home = tmp_path / "torch"
    cached = torch_home / "hub" / "checkpoints" / weights_catalog.IMAGENET1K_V1["resnet18"].file_name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"the published file")
    data = make_dataset(tmp_path / "data", per_class=4)
    result = run_cli("train", data, "--backend", "azure", "--arch", "resnet18", "--weights-upload", "--dry-run",
                     "--export", tmp_path / "job.yml", env={"TORCH_HOME": str(torch_home)})
    assert result.returncode == 0, result.stderr
    assert f"weights:     {cached} -> uploaded as the input 'weights'" in result.stdout
    from azure.ai.ml import load_job

    job = load_job(str(tmp_path / "job.yml"))
    assert job.inputs["weights"].path == str(cached) and "--weights ${{inputs.weights}}" in job.command
    assert mirror.requests == []  # already cached: nothing fetched
