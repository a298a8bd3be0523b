"""`orchestrate serve`: the real server in a subprocess, a real model, a real HTTP client.

Predictions must equal `orchestrate predict` on the same files (multipart, base64, batches, many
requests at once), and every kind of bad input -- bodies that are not JSON, not base64, not an
image, the wrong content type, too large in bytes or, by their header, in pixels -- must be a 4xx
answer with a JSON `{"error": ...}`, never a 500, with the server still healthy afterwards.
Hostile clients, over raw sockets: a Host header not trusted (DNS rebinding), more connections
than allowed, requests that stall or trickle, and abandoned 19 MB uploads, whose memory the
server's process (its VmRSS) must give back.
"""
import base64
import io
import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from remote_scripts import imaging

from conftest import wait_for
from orchestrator.errors import UsageError
from orchestrator.inference.serve_settings import trusted_hosts
from serving import free_port, running_server, server_process, train_tiny_model

pytestmark = pytest.mark.slow

MAX_BYTES = 200_000  # small, so the oversized bodies of the tests stay small too
READ_TIMEOUT = 4     # the guarded server's --read-timeout: short for the tests, long for a loaded machine


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(model):
    with running_server(model[0], "--max-bytes", MAX_BYTES) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def guarded(model):
    """A server with small limits: two connections, four seconds to send a request, two more hosts."""
    with running_server(model[0], "--max-connections", 2, "--read-timeout", READ_TIMEOUT,
                        "--allowed-host", "serve.example", "--allowed-host", "*.apps.example") as base_url:
        yield base_url


@pytest.fixture(scope="module")
def open_server(model, tmp_path_factory):
    """A server with the default limits that answers any Host: (base URL, its process, its log)."""
    log = tmp_path_factory.mktemp("open") / "serve.log"
    with server_process(model[0], "--allowed-host", "*", log_path=log) as (base_url, process):
        yield base_url, process, log


@pytest.fixture(scope="module")
def images(model):
    """Two files per class, PNG and JPEG among them."""
    _, data = model
    return [path for label in ("red", "green", "blue") for path in sorted((data / label).glob("*.*"))[:2]]


@pytest.fixture(scope="module")
def expected(model, images):
    """What `orchestrate predict --top-k 3 --json` answers for each image, by path."""
    from conftest import run_cli

    result = run_cli("predict", model[0], *images, "--top-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    return {entry["image"]: entry for entry in json.loads(result.stdout)}


def assert_same_prediction(got, want):
    assert got["label"] == want["label"]
    assert got["score"] == pytest.approx(want["score"], rel=1e-5, abs=1e-6)
    assert [t["label"] for t in got["top_k"]] == [t["label"] for t in want["top_k"]]
    assert [t["score"] for t in got["top_k"]] == pytest.approx([t["score"] for t in want["top_k"]], rel=1e-5, abs=1e-6)


def b64(path):
    return base64.b64encode(path.read_bytes()).decode()


def assert_json_error(response, status=None):
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error, str) and error
    return error


def png_claiming(width, height):
    """A valid 8x8 PNG whose header (IHDR, CRC fixed up) claims width x height pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buffer, "PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", width, height)  # after the signature, IHDR's length and type
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


# --------------------------------------------------------------------------------------------
# Predictions


def test_multipart_and_base64_answer_what_predict_answers(server, images, expected):
    for path in images:
        with open(path, "rb") as f:
            upload = httpx.post(f"{server}/predict", params={"top_k": 3}, files={"file": (path.name, f)})
        assert upload.status_code == 200, upload.text
        assert upload.json()["image"] == path.name
        assert_same_prediction(upload.json(), expected[str(path)])
        posted = httpx.post(f"{server}/predict?top_k=3", json={"data": b64(path)})
        assert posted.status_code == 200, posted.text
        assert "image" not in posted.json()
        assert_same_prediction(posted.json(), expected[str(path)])


def test_top_k_defaults_to_five_capped_at_the_label_count(server, images):
    answer = httpx.post(f"{server}/predict", json={"data": b64(images[0])}).json()
    assert len(answer["top_k"]) == 3  # three labels
    assert answer["top_k"][0] == {"label": answer["label"], "score": answer["score"]}
    assert sum(t["score"] for t in answer["top_k"]) == pytest.approx(1.0, abs=1e-4)


def test_batch_of_files_and_of_json_keeps_order_and_reports_the_unreadable_one(server, images, expected):
    files = [("files", (p.name, p.read_bytes())) for p in images[:3]]
    files.insert(1, ("files", ("broken.png", b"not an image")))
    answer = httpx.post(f"{server}/predict/batch?top_k=3", files=files)
    assert answer.status_code == 200, answer.text
    results = answer.json()
    assert [r["image"] for r in results] == [images[0].name, "broken.png", images[1].name, images[2].name]
    assert "cannot read image" in results[1]["error"] and "label" not in results[1]
    for result, path in zip([results[0], *results[2:]], images[:3]):
        assert_same_prediction(result, expected[str(path)])

    listed = httpx.post(f"{server}/predict/batch?top_k=3", json=[{"data": b64(p)} for p in images])
    assert listed.status_code == 200, listed.text
    for result, path in zip(listed.json(), images, strict=True):
        assert_same_prediction(result, expected[str(path)])


def test_concurrent_requests_share_the_session_and_all_answer_right(server, images, expected):
    jobs = [images[i % len(images)] for i in range(32)]

    def ask(path):
        with httpx.Client(timeout=60) as client:
            return path, client.post(f"{server}/predict?top_k=3", json={"data": b64(path)})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, jobs))
    for path, response in answers:
        assert response.status_code == 200, response.text
        assert_same_prediction(response.json(), expected[str(path)])


# --------------------------------------------------------------------------------------------
# Bad input: 4xx JSON, never a 500

BAD_BODIES = {
    "not json": ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    "json nested too deeply": ({"content": b"[" * 5000, "headers": {"content-type": "application/json"}}, 400,
                               "nested too deeply"),  # the parser's RecursionError, not a 500
    "deep json closed": ({"content": b"[" * 50_000 + b"]" * 50_000, "headers": {"content-type": "application/json"}},
                         400, "nested too deeply"),
    "json not an object": ({"json": ["data"]}, 400, '{"data"'),
    "json without data": ({"json": {"image": "abc"}}, 400, '{"data"'),
    "data not a string": ({"json": {"data": 12}}, 400, "base64 string"),
    "bad base64": ({"json": {"data": "this is not base64!!"}}, 400, "not valid base64"),
    "empty base64": ({"json": {"data": ""}}, 400, "empty"),
    "base64 of text": ({"json": {"data": base64.b64encode(b"hello, world").decode()}}, 422, "cannot read image"),
    "text file upload": ({"files": {"file": ("notes.png", b"this is a text file")}}, 422, "cannot read image"),
    "empty upload": ({"files": {"file": ("empty.png", b"")}}, 400, "empty"),
    "truncated png": ({"files": {"file": ("cut.png", png_claiming(8, 8)[:40])}}, 422, "cannot read image"),
    "wrong field": ({"files": {"image": ("a.png", png_claiming(8, 8))}}, 400, "'file'"),
    "text field": ({"data": {"file": "hello"}, "files": {"other": ("a.png", b"x")}}, 400, "not text"),
    "two files": ({"files": [("file", ("a.png", png_claiming(8, 8))), ("file", ("b.png", png_claiming(8, 8)))]},
                  400, "/predict/batch"),
    "text/plain": ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "Content-Type"),
    "no content type": ({"content": b"hello"}, 415, "not none"),
    "form urlencoded": ({"data": {"data": "abc"}}, 415, "application/x-www-form-urlencoded"),
    "multipart without boundary": ({"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}, 400,
                                   "boundary"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_a_bad_body_is_a_clear_4xx_json_error(server, case):
    request, status, reason = BAD_BODIES[case]
    error = assert_json_error(httpx.post(f"{server}/predict", **request), status)
    assert reason in error


@pytest.mark.parametrize("request_kwargs, reason", [
    ({"json": {"data": "abc"}}, "a list"),
    ({"content": b"[" * 5000, "headers": {"content-type": "application/json"}}, "nested too deeply"),
    ({"json": []}, "no images"),
    ({"json": [{"data": "%%%"}]}, "item 0: data is not valid base64"),
    ({"files": {"file": ("a.png", b"x")}}, "no images"),
    ({"json": [{"data": "AAAA"}] * 65}, "more than 64"),
])
def test_a_bad_batch_is_a_clear_4xx_json_error(server, request_kwargs, reason):
    assert reason in assert_json_error(httpx.post(f"{server}/predict/batch", **request_kwargs))


def test_bad_parameters_and_unknown_routes_are_json_errors(server, images):
    assert "top_k" in assert_json_error(httpx.post(f"{server}/predict?top_k=0", json={"data": b64(images[0])}), 422)
    assert "top_k" in assert_json_error(httpx.post(f"{server}/predict?top_k=many", json={"data": b64(images[0])}), 422)
    assert_json_error(httpx.get(f"{server}/predict"), 405)
    assert_json_error(httpx.get(f"{server}/no-such-page"), 404)


def test_an_oversized_body_is_refused_with_413(server, images):
    big = b"\0" * (MAX_BYTES + 1)
    assert "limit of 200000 bytes" in assert_json_error(
        httpx.post(f"{server}/predict", files={"file": ("big.png", big)}), 413)

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(4):
            yield b" " * (MAX_BYTES // 2)

    assert "limit" in assert_json_error(
        httpx.post(f"{server}/predict", content=chunks(), headers={"content-type": "application/json"}), 413)
    # Far more than the socket buffers hold: the client is still sending when the answer is ready.
    huge = b"\0" * 32_000_000
    assert "limit" in assert_json_error(httpx.post(f"{server}/predict", files={"file": ("huge.png", huge)},
                                                   timeout=60), 413)
    assert httpx.post(f"{server}/predict", json={"data": b64(images[0])}).status_code == 200


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (10_000, 6_000)])
def test_a_decompression_bomb_is_refused_by_its_header(server, images, width, height):
    """10^10 pixels trips PIL's own limit at open; 6*10^7 only the server's --max-pixels (5*10^7)."""
    bomb = png_claiming(width, height)
    assert len(bomb) < 100
    started = time.monotonic()
    error = assert_json_error(httpx.post(f"{server}/predict", files={"file": ("bomb.png", bomb)}), 413)
    assert "image too large" in error
    assert time.monotonic() - started < 5  # refused before any decoding, not after
    error = assert_json_error(httpx.post(f"{server}/predict", json={"data": base64.b64encode(bomb).decode()}), 413)
    batch = httpx.post(f"{server}/predict/batch", files=[("files", ("bomb.png", bomb)),
                                                         ("files", (images[0].name, images[0].read_bytes()))])
    assert batch.status_code == 200
    assert "image too large" in batch.json()[0]["error"] and "label" in batch.json()[1]
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_an_unreadable_image_is_named_by_its_file_name_not_by_a_buffer(server):
    """PIL names an image read from memory by its buffer (<_io.BytesIO object at 0x7f...>): the
    answer names the upload instead, the same words each time."""
    unreadable = "cannot read image: UnidentifiedImageError: cannot identify image file "
    error = assert_json_error(httpx.post(f"{server}/predict", files={"file": ("notes.png", b"just text")}), 422)
    assert error == unreadable + "'notes.png'"
    error = assert_json_error(httpx.post(f"{server}/predict", json={"data": base64.b64encode(b"just text").decode()}),
                              422)
    assert error == unreadable + "(the uploaded image)"
    batch = httpx.post(f"{server}/predict/batch", files=[("files", ("a.txt", b"x")), ("files", ("b.png", b"y"))])
    assert [r["error"] for r in batch.json()] == [unreadable + "'a.txt'", unreadable + "'b.png'"]
    listed = httpx.post(f"{server}/predict/batch", json=[{"data": base64.b64encode(b"x").decode()}])
    assert [r["error"] for r in listed.json()] == [unreadable + "(the uploaded image)"]


def test_the_jobs_words_for_a_file_are_unchanged_and_a_buffer_is_renamed_only_when_asked(tmp_path):
    buffer = io.BytesIO(b"just text")
    with pytest.raises(imaging.DECODE_ERRORS) as failure:
        Image.open(buffer)
    assert imaging.describe_decode_error(failure.value) == f"UnidentifiedImageError: {failure.value}"
    assert repr(buffer) in imaging.describe_decode_error(failure.value)
    assert imaging.describe_decode_error(failure.value, name="'up.png'") == (
        "UnidentifiedImageError: cannot identify image file 'up.png'")
    path = tmp_path / "notes.png"
    path.write_text("just text")
    with pytest.raises(imaging.DECODE_ERRORS) as failure:
        Image.open(path)
    assert imaging.describe_decode_error(failure.value, name="x") == imaging.describe_decode_error(failure.value)


def test_one_loader_for_files_and_uploads_with_its_pixel_limit(model, images, tmp_path):
    """The classifier's loader: bytes decode exactly as the same file does; the header limit, PIL's
    bomb limit, an empty upload and an unreadable one are refused with their reasons; the batching
    of `stream` takes uploads and files alike."""
    from orchestrator.inference import classifier as module

    plain = module.OnnxClassifier(model[0])
    limited = module.OnnxClassifier(model[0], max_pixels=1_000_000)
    for path in images:
        np.testing.assert_array_equal(limited.load((path.name, path.read_bytes())), plain.load(path))
        np.testing.assert_array_equal(limited.load((None, path.read_bytes())), plain._load(str(path)))

    def refused(classifier, source):
        with pytest.raises(module.ImageRejected) as failure:
            classifier.load(source)
        return failure.value.reason, failure.value.message

    assert refused(limited, ("wide.png", png_claiming(2000, 1000))) == (
        module.TOO_LARGE, "image too large: 2000x1000 = 2000000 pixels, more than the limit of 1000000")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(100_000, 100_000))
    reason, message = refused(limited, bomb)  # a file is checked by its header too
    assert reason == module.TOO_LARGE and message.startswith("image too large: Image size (10000000000 pixels)")
    reason, message = refused(plain, bomb)  # without a limit: the job's words, as metrics.json has them
    assert reason == module.TOO_LARGE and message.startswith("cannot read image: DecompressionBombError: ")
    assert refused(plain, ("empty.png", b"")) == (module.EMPTY, "the image is empty (0 bytes)")
    assert refused(plain, ("cut.png", png_claiming(8, 8)[:40]))[0] == module.UNREADABLE

    sources = [images[0], ("up.png", images[1].read_bytes()), ("bad.png", b"no"), str(images[2])]
    rows = list(limited.stream(sources, batch_size=2, workers=1))
    assert [error for _, error in rows] == [None, None, "cannot read image: UnidentifiedImageError: cannot "
                                            "identify image file 'bad.png'", None]
    want = plain.classify([images[0], images[1], images[2]])
    for (probs, _), (expected_probs, _) in zip([rows[0], rows[1], rows[3]], want):
        np.testing.assert_allclose(probs, expected_probs, rtol=1e-5, atol=1e-6)


def test_serve_help_loads_neither_fastapi_nor_the_model_runtime():
    code = ("import sys\nfrom orchestrator.cli.main import cli\n"
            "try:\n    cli(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('fastapi', 'starlette', 'uvicorn', 'pydantic', 'onnxruntime') "
            "if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--max-pixels" in out.stdout and "50000000" in out.stdout
    assert all(option in out.stdout for option in ("--allowed-host", "--max-connections", "--read-timeout"))
    assert "HEAVY []" in out.stdout


def test_damaged_images_of_every_format_are_answered_never_with_a_500(server):
    """Real files in each format the job reads, with random bytes overwritten and tails cut: every
    way PIL's decoders fail on them must be one of imaging.DECODE_ERRORS, answered with a 422."""
    rng = random.Random(0)
    picture = Image.radial_gradient("L").convert("RGB").resize((48, 40))
    originals = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"):
        buffer = io.BytesIO()
        picture.save(buffer, fmt)
        originals.append(buffer.getvalue())
    bodies = []
    for _ in range(240):
        body = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 12)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        bodies.append(bytes(body[:rng.randint(len(body) // 3, len(body))] if rng.random() < 0.3 else body))

    def ask(body):
        with httpx.Client(timeout=60) as client:
            return client.post(f"{server}/predict", files={"file": ("damaged", body)})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, bodies))
    statuses = sorted({answer.status_code for answer in answers})
    assert set(statuses) <= {200, 413, 422}, statuses
    assert 422 in statuses  # the damage did make unreadable images, and they were refused cleanly
    for answer in answers:
        if answer.status_code == 200:
            assert answer.json()["label"] in ("blue", "green", "red")
        else:
            assert_json_error(answer)
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


# --------------------------------------------------------------------------------------------
# Metadata endpoints and the page


def test_labels_health_docs_and_page(server):
    assert httpx.get(f"{server}/labels").json() == {"labels": ["blue", "green", "red"]}
    health = httpx.get(f"{server}/health").json()
    assert health == {"status": "ok", "model": "model.onnx", "labels": 3, "input_size": [32, 32]}
    schema = httpx.get(f"{server}/openapi.json").json()
    assert {"/predict", "/predict/batch", "/labels", "/health"} <= set(schema["paths"])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert "swagger" in httpx.get(f"{server}/docs").text.lower()
    page = httpx.get(f"{server}/")
    assert page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "predict?top_k=" in page.text and "https://" not in page.text


# --------------------------------------------------------------------------------------------
# The command line


def test_several_workers_serve_the_same_answers(model, images, expected):
    with running_server(model[0], "--workers", "2") as base_url:
        for path in images:
            answer = httpx.post(f"{base_url}/predict?top_k=3", json={"data": b64(path)})
            assert answer.status_code == 200, answer.text
            assert_same_prediction(answer.json(), expected[str(path)])


def test_a_missing_model_a_busy_port_or_a_bad_host_pattern_is_one_line_and_exit_2(model, cli, tmp_path):
    for pattern, reason in [("a*.example", "wildcard"), ("*example.com", "wildcard"), ("serve.example:80", "port")]:
        bad = cli("serve", model[0], "--allowed-host", pattern, timeout=60)
        assert bad.returncode == 2 and reason in bad.stderr and pattern in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    missing = cli("serve", tmp_path / "nope.onnx", timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("error:")
    assert len(missing.stderr.strip().splitlines()) == 1
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("not a model")
    broken = cli("serve", not_onnx, "--port", free_port(), timeout=60)
    assert broken.returncode == 2 and "not a readable ONNX model" in broken.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = cli("serve", model[0], "--port", busy.getsockname()[1], timeout=60)
    assert taken.returncode == 2 and "already in use" in taken.stderr
    assert len(taken.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# Hostile clients: hosts, connections, time, memory


def send_head(sock, length, host="localhost", path="/predict"):
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode())


def read_until_closed(sock, limit):
    """Everything the server sends until it closes the connection, and the seconds that took."""
    sock.settimeout(limit)
    started, answer = time.monotonic(), b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer, time.monotonic() - started


def test_an_untrusted_host_gets_400_not_a_prediction(server, images):
    """DNS rebinding: a page of evil.example that resolves its name to 127.0.0.1 sends Host: evil.example."""
    base = server.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{base}", "127.0.0.1.evil.example", "[::2]"):
        refused = httpx.post(f"{server}/predict", json={"data": b64(images[0])}, headers={"host": host})
        assert refused.status_code == 400 and refused.text == "Invalid host header", (host, refused.text)
    for host in ("localhost", f"localhost:{base}", "127.0.0.1", "[::1]", "LocalHost"):
        answered = httpx.post(f"{server}/predict", json={"data": b64(images[0])}, headers={"host": host})
        assert answered.status_code == 200 and "label" in answered.json(), (host, answered.text)


def test_allowed_host_adds_names_and_a_star_admits_any(guarded, open_server):
    for host, status in [("serve.example", 200), ("serve.example:8000", 200), ("a.apps.example", 200),
                         ("apps.example", 400), ("evil.example", 400), ("localhost", 200)]:
        assert httpx.get(f"{guarded}/health", headers={"host": host}).status_code == status, host
    open_url = open_server[0]
    for host in ("evil.example", "anything.at.all:1234"):
        assert httpx.get(f"{open_url}/health", headers={"host": host}).status_code == 200, host


def test_the_trusted_hosts_are_loopback_the_bind_address_and_the_allowed_ones():
    loopback = ["localhost", "127.0.0.1", "[::1]"]
    assert trusted_hosts("127.0.0.1") == loopback
    assert trusted_hosts("10.1.2.3") == [*loopback, "10.1.2.3"]
    assert trusted_hosts("fe80::1") == [*loopback, "[fe80::1]"]
    assert trusted_hosts("0.0.0.0") == trusted_hosts("::") == loopback  # not a name any client sends
    assert trusted_hosts("0.0.0.0", ["Serve.Example", "2001:db8::7", "*.apps.example", "*"]) == [
        *loopback, "serve.example", "[2001:db8::7]", "*.apps.example", "*"]
    for bad in ("a*b", "*example.com", "**", "serve.example:8000"):
        with pytest.raises(UsageError, match="--allowed-host"):
            trusted_hosts("127.0.0.1", [bad])


def test_a_body_that_stalls_or_trickles_gets_408_and_its_connection_closed(guarded):
    """The whole body has --read-timeout from its headers on: a byte now and then does not extend it."""
    with socket.create_connection(("127.0.0.1", int(guarded.rsplit(":", 1)[1]))) as stalled:
        send_head(stalled, 1000)
        stalled.sendall(b'{"data": "AAAA')
        answer, seconds = read_until_closed(stalled, READ_TIMEOUT + 30)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer.lower() and b"--read-timeout" in answer
    assert READ_TIMEOUT - 0.5 < seconds < READ_TIMEOUT + 25

    with socket.create_connection(("127.0.0.1", int(guarded.rsplit(":", 1)[1]))) as trickling:
        send_head(trickling, 1000)
        closed = threading.Event()

        def trickle():
            while not closed.wait(0.3):
                try:
                    trickling.sendall(b"A")
                except OSError:
                    return

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            answer, seconds = read_until_closed(trickling, READ_TIMEOUT + 30)
        finally:
            closed.set()
            sender.join()
    assert answer.startswith(b"HTTP/1.1 408 ") and seconds < READ_TIMEOUT + 25
    assert httpx.get(f"{guarded}/health").status_code == 200


def test_a_silent_connection_or_unfinished_headers_are_closed_after_the_read_timeout(guarded):
    """Closed, and not before: each socket stays open the whole --read-timeout from its connection."""
    port = int(guarded.rsplit(":", 1)[1])
    opened = time.monotonic()  # before the server can have taken either in, so its timers start later
    with socket.create_connection(("127.0.0.1", port)) as silent, \
            socket.create_connection(("127.0.0.1", port)) as halfway:
        halfway.sendall(b"GET /health HTTP/1.1\r\nHost: loc")
        for sock in (silent, halfway):
            answer, seconds = read_until_closed(sock, READ_TIMEOUT + 30)
            assert answer == b""
            assert seconds < READ_TIMEOUT + 25
            assert time.monotonic() - opened > READ_TIMEOUT - 0.5
    assert httpx.get(f"{guarded}/health").status_code == 200


def test_connections_beyond_the_limit_get_503_until_one_closes(model):
    """A server of its own, whose --read-timeout no loaded machine outlasts: the holders' uploads are
    not cut off with a 408 (which frees their connections) before the third one is asked."""
    with running_server(model[0], "--max-connections", 2, "--read-timeout", 600) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        holders = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            for sock in holders:  # two uploads in progress: --max-connections 2
                send_head(sock, 1000)
                sock.sendall(b'{"data": "')
            answers = []  # the server may not have taken the two in yet: asked until it has
            wait_for(lambda: answers.append(httpx.get(f"{base_url}/health")) or answers[-1].status_code == 503,
                     "a third connection refused", timeout=60)
            assert answers[-1].text == "Service Unavailable"
        finally:
            for sock in holders:
                sock.close()
        wait_for(lambda: httpx.get(f"{base_url}/health").status_code == 200, "served again once they closed",
                 timeout=20)


def test_the_default_connection_limit_serves_the_benchmarks_clients(server, images):
    """benchmarks/serve.py posts from 8 clients at once; 16 here, all kept open, all answered."""
    clients = [httpx.Client(timeout=60) for _ in range(16)]
    try:
        for client in clients:  # every connection open at once before any of them is answered
            assert client.get(f"{server}/health").status_code == 200
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda c: c.post(f"{server}/predict", json={"data": b64(images[0])}), clients))
        assert [a.status_code for a in answers] == [200] * 16
    finally:
        for client in clients:
            client.close()


def vm_rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def bytes_in_flight(port):
    """Bytes sent to `port` and not yet read by the server: the client sockets' send queues and the
    server sockets' receive queues, from /proc/net/tcp."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state, queues = line.split()[1:5]
        send_queue, receive_queue = (int(q, 16) for q in queues.split(":"))
        if state == "01" and int(local.split(":")[1], 16) == port:
            total += receive_queue
        elif state == "01" and int(remote.split(":")[1], 16) == port:
            total += send_queue
    return total


def test_ten_abandoned_19_mb_uploads_give_their_memory_back(open_server, images):
    """Ten clients send 19 MB JSON bodies at once, in 64 KB pieces, and hang up before the end while
    others are being answered: the server's resident memory must come back within 50 MB of where
    it was, and the hang-ups are no errors in its log."""
    base_url, process, log = open_server
    port = int(base_url.rsplit(":", 1)[1])
    # ONNX Runtime allocates its buffers on the first inference: made before, not counted as held.
    assert httpx.post(f"{base_url}/predict", json={"data": b64(images[0])}).status_code == 200
    before = vm_rss_mb(process.pid)
    body_size, piece = 19_000_000, b"A" * 65536
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    try:
        for sock in clients:
            send_head(sock, body_size, host="127.0.0.1")
            sock.sendall(b'{"data": "')
        for _ in range((body_size - 1_000_000) // len(piece)):  # interleaved, as many clients' pieces arrive
            for sock in clients:
                sock.sendall(piece)
        wait_for(lambda: bytes_in_flight(port) == 0, "the server reading what was sent", timeout=60)
        for _ in range(3):  # the others' requests leave objects that live on above the pieces on the heap
            assert httpx.post(f"{base_url}/predict", json={"data": b64(images[0])}).status_code == 200
        held = vm_rss_mb(process.pid)
    finally:
        for sock in clients:
            sock.close()
    assert held - before > 80, (before, held)  # the bodies were held: a real test of giving back
    deadline = time.monotonic() + 30  # the server notices the hang-ups as its loop gets to them
    while (now := vm_rss_mb(process.pid)) >= before + 50 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert now < before + 50, f"VmRSS {before:.0f} MB before, {held:.0f} MB held, {now:.0f} MB after"
    assert httpx.get(f"{base_url}/health").status_code == 200
    assert "Exception in ASGI application" not in log.read_text()
