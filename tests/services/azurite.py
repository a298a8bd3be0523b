"""Azurite, Microsoft's Azure Storage emulator, started for the blob tests (DESIGN.md 5).

`scripts/setup_azurite.sh` installs it into .tools/. The session fixture starts `azurite-blob` on
127.0.0.1 with a free port and a temporary data folder and stops it at the end. When Azurite or
node is missing the tests skip, except in CI (the variable CI is set), where they fail.
The benchmark imports `start_azurite` too, so both talk to the same kind of service.
"""
import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The well-known development account every Azurite serves (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite:
    """A running azurite-blob: its endpoint and a connection string for the dev account."""

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.connection_string = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                                  f"BlobEndpoint={endpoint};")

    def put_blob_as_named(self, container, name, data):
        """Store a blob in the (existing) `container` under `name` byte for byte, '..' segments and
        all, as another writer of a container may: the SDK's HTTP stack removes them from a URL
        (whose signature then fails), so the request goes out through http.client, authorized by a
        container SAS, which does not sign the path."""
        import http.client
        from datetime import datetime, timedelta, timezone
        from urllib.parse import quote, urlsplit

        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        sas = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                     permission=ContainerSasPermissions(create=True, write=True),
                                     expiry=datetime.now(timezone.utc) + timedelta(hours=1))
        endpoint = urlsplit(self.endpoint)
        connection = http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=30)
        try:
            connection.request("PUT", f"{endpoint.path}/{container}/{quote(name)}?{sas}", body=data,
                               headers={"x-ms-blob-type": "BlockBlob"})
            response = connection.getresponse()
            if response.status != 201:
                raise RuntimeError(f"Azurite refused the blob {name!r}: HTTP {response.status} {response.read()[:200]}")
        finally:
            connection.close()


def azurite_command():
    """The azurite-blob executable: .tools/ first, then PATH; None when neither has it."""
    local = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    if local.exists() and shutil.which("node"):
        return str(local)
    return shutil.which("azurite-blob")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def start_azurite(data_dir, timeout=30):
    """Run azurite-blob until the block exits; yields an Azurite."""
    command = azurite_command()
    if command is None:
        raise FileNotFoundError("azurite-blob not found: run scripts/setup_azurite.sh (needs node and npm)")
    port = free_port()
    log = open(Path(data_dir) / "azurite.log", "wb")
    proc = subprocess.Popen([command, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                             str(data_dir), "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, timeout, log.name)
        yield Azurite(f"http://127.0.0.1:{port}/{ACCOUNT}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_for_port(port, proc, timeout, log_path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"azurite-blob exited with {proc.returncode}: {Path(log_path).read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"azurite-blob did not listen on port {port} within {timeout} s")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """A running Azurite for the whole test session."""
    if azurite_command() is None:
        message = "Azurite is not installed: run scripts/setup_azurite.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with start_azurite(tmp_path_factory.mktemp("azurite")) as service:
        yield service
