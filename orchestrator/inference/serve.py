"""`orchestrate serve`: one trained model behind HTTP, for programs (JSON) and for people (a page).

The endpoints take an image as a multipart upload (field `file`) or as JSON `{"data": "<base64>"}`,
the request shape of Model Builder's generated web API, so a client written for that API only
changes its URL. Images go through remote_scripts.imaging, the decode the training job used, so
the service answers what `orchestrate predict` answers for the same file.

One ONNX Runtime session serves every request: its run is thread-safe, and decoding and inference
run in worker threads, off the event loop, so slow clients never stall the others. Decodes run at
most one per CPU, so a queue of large uploads never holds more images being decoded than there are
cores; the decoded images of /predict requests that wait are then scored together (Batcher). Input from the
network is untrusted: bodies are capped in bytes before they are read whole and in time while they
arrive, images in pixels by their header before they are decoded (a 100-byte PNG can claim
100000x100000 pixels), and every bad input is a 4xx answer `{"error": "..."}`, never a 500. Two
refusals come from the libraries before the app: a Host header not trusted (DNS rebinding: a web
page posting to the service under a name of its own) is Starlette's 400 "Invalid host header", and
a request while --max-connections are open is uvicorn's 503 "Service Unavailable".
"""
import asyncio
import base64
import binascii
import ctypes
import functools
import json
import os
from importlib import resources

import anyio
import h11
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from .classifier import (EMPTY, TOO_LARGE, UNREADABLE, ImageRejected, OnnxClassifier, decode_rgb, decode_threads,
                         overlay, png_bytes)
from .. import events
from ..errors import UsageError
from .serve_settings import (CONFIG_ENV, DEFAULT_MAX_BYTES, DEFAULT_MAX_CONNECTIONS,  # noqa: F401 (re-exported)
                             DEFAULT_MAX_PIXELS, DEFAULT_READ_TIMEOUT, EVERY_INTERFACE, LOOPBACK_HOSTS,
                             check_port_free, trusted_hosts)

DEFAULT_TOP_K = 5
MAX_BATCH = 64                        # images per /predict/batch request
PREDICT_BATCH = 32                    # /predict images scored in one ONNX Runtime call at most
OVERLAY_SIDE = 512                    # /explain's picture fits in a square of this side
RELEASE_AFTER = 1024 * 1024           # a body this large, once dropped, is followed by giving memory back
# The answer to each reason the classifier's loader refuses an image for.
STATUS_OF = {EMPTY: 400, TOO_LARGE: 413, UNREADABLE: 422}

PAGE = "serve_page.html"
JSON_TYPES = ("application/json",)
FORM_TYPE = "multipart/form-data"


class BadInput(Exception):
    """A request the service refuses: answered with `status` and `{"error": message}`."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class Scored(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    image: str | None = None  # the uploaded file's name, when it had one
    label: str
    score: float
    top_k: list[Scored]


class Explanation(Prediction):
    explained: str  # the label whose map is drawn
    overlay: str    # data:image/png;base64,... : the map over the picture


class BatchItem(BaseModel):
    """One image of a batch: its prediction, or why it could not be read (the others still are)."""

    image: str | None = None
    label: str | None = None
    score: float | None = None
    top_k: list[Scored] | None = None
    error: str | None = None


class Predictor:
    """The shared model: decodes request images and scores them with the one ORT session.

    Images go through the classifier's own loader (its max_pixels checked from the header) and a
    batch through its stream, as files do in `orchestrate predict`: one decode, one batching.
    """

    def __init__(self, classifier):
        self.classifier = classifier

    def ranked(self, probs, top_k):
        top = self.classifier.top_k(probs, min(top_k, len(self.classifier.labels)))
        return {"label": top[0]["label"], "score": top[0]["score"], "top_k": top}

    def pixels(self, name, data):
        """The model's input for one image; BadInput when it cannot be read."""
        try:
            return self.classifier.load((name, data))
        except ImageRejected as exc:
            raise BadInput(STATUS_OF[exc.reason], exc.message) from None

    def explain_one(self, name, data, top_k, label):
        """A prediction for one image plus the class activation map of `label` (default: the
        predicted class) over it, as a PNG data URL; BadInput when it cannot be read or explained
        (501 for a model without maps: no request to it can succeed)."""
        if not self.classifier.has_cam:
            raise BadInput(501, f"{self.classifier.path.name} has no class activation map "
                                f"({self.classifier.no_cam_reason})")
        try:
            probs, heat, explained = self.classifier.explain_one((name, data), label)
        except ImageRejected as exc:
            raise BadInput(STATUS_OF[exc.reason], exc.message) from None
        except UsageError as exc:  # a label the model does not have
            raise BadInput(400, str(exc)) from None
        png = png_bytes(overlay(decode_rgb((name, data)), heat, OVERLAY_SIDE))
        return {"image": name, **self.ranked(probs, top_k), "explained": explained,
                "overlay": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}

    def predict_many(self, items, top_k):
        """One entry per (name, bytes) in order; an unreadable image gets an error, the rest a prediction.

        One decode thread beside this one: the limiter already holds one prediction per CPU.
        """
        scored = self.classifier.stream(items, workers=1)
        return [{"image": name, "error": error} if error else {"image": name, **self.ranked(probs, top_k)}
                for (name, _), (probs, error) in zip(items, scored, strict=True)]


class Batcher:
    """The images of /predict requests that wait, scored together in one ONNX Runtime call.

    Why: one call at a time, each with ONNX Runtime's threads for every CPU, keeps the cores busy
    without oversubscribing them (a call per CPU at once, each with a thread per CPU, ran 0.81x-1.28x
    as fast as predicting one image at a time in-process, from run to run), and a batch costs less
    per image than single images do (benchmarks/serve.py: 1.29x in fp32, 4.0x in int8). No timer: the
    first image is scored at once, and the images that arrive while a call runs (up to max_batch)
    go into the next one, so batches grow with the load and an idle service answers without delay.
    An image's decode fails its own request before it gets here; a failing call fails its batch.
    """

    def __init__(self, classifier, max_batch):
        self.classifier = classifier
        self.max_batch = max_batch
        self.waiting = []     # (pixels, future) of the images the next call scores
        self.running = None   # the task making the calls while images wait

    async def probabilities(self, pixels):
        """The class probabilities of one image [3, H, W], scored with the images waiting beside it."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((pixels, future))
        if self.running is None:
            self.running = asyncio.create_task(self.run())
        return await future

    async def run(self):
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[:self.max_batch], self.waiting[self.max_batch:]
                futures = [future for _, future in batch]
                try:
                    probs = await anyio.to_thread.run_sync(self.classifier.probabilities,
                                                           np.stack([pixels for pixels, _ in batch]))
                except Exception as exc:  # each request of the batch answers it (a 500)
                    for future in futures:
                        if not future.done():  # not cancelled
                            future.set_exception(exc)
                    continue
                for future, row in zip(futures, probs, strict=True):
                    if not future.done():
                        future.set_result(row)
        finally:
            self.running = None


class BodyLimits:
    """ASGI middleware: a request body is capped in bytes and in time, and its memory given back after.

    Bytes: a declared Content-Length over max_bytes is refused with 413 before anything is read; a
    chunked body is counted as it arrives and stopped at the limit (BadInput raised inside the
    endpoint that reads it).
    Time: the whole body must arrive within `timeout` seconds of its request's headers, or the answer
    is 408 and the connection is closed. uvicorn has no such timeout (its keep-alive timeout runs
    between requests only), so a client that stalls or trickles mid-body would hold one of the
    --max-connections for as long as it likes. (The headers have theirs in HeaderDeadline.)
    Memory: a client gone mid-body is nobody to answer and no fault of the service to log. Once a
    large body is abandoned or refused (408, 413), the heap's free pages go back to the system, in a
    worker thread: malloc_trim takes 5-50 ms, which on the event loop would stall every connection.
    A body answered is not followed by one: every ordinary 2-8 MB photo would pay for it, and what
    answered requests free is reused by the requests after them.
    """

    def __init__(self, app, max_bytes, timeout):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    def too_large(self):
        return BadInput(413, f"request body larger than the limit of {self.max_bytes} bytes (--max-bytes)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_json(send, 413, {"error": self.too_large().message})
            return
        deadline = anyio.current_time() + self.timeout
        received = 0
        complete = False
        dropped = False  # the body was refused (408, 413) or its client went away before its end

        async def limited_receive():
            nonlocal received, complete, dropped
            if complete:  # after the body only a disconnect can come, whenever it comes
                return await receive()
            try:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0)):
                    message = await receive()
            except TimeoutError:
                dropped = True
                raise BadInput(408, f"the request body did not arrive within {self.timeout:g} s (--read-timeout)",
                               headers={"connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    dropped = True
                    raise self.too_large()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except ClientDisconnect:  # gone mid-body: nobody to answer, and no fault of the service to log
            dropped = True
        if dropped and received >= RELEASE_AFTER:
            await anyio.to_thread.run_sync(release_freed_memory)


class HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 connection, closed when it leaves a request's headers unfinished too long.

    uvicorn times a connection out only after a response (its keep-alive timeout), and any byte that
    arrives cancels even that: a connection opened and left silent, or sent half a request line,
    would hold one of the --max-connections for good, and that many such sockets would shut every
    client out. Here, from the connection's start and from each response on, the next request's
    headers must be complete within `read_timeout` seconds; a request being answered is left alone
    (its body has BodyLimits' deadline), but one answered early, whose body still trickles in, is not.
    uvicorn builds its protocol objects itself: pass functools.partial(HeaderDeadline, read_timeout=T)
    as its `http`.
    """

    def __init__(self, *args, read_timeout, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout
        self.header_timer = None

    def connection_made(self, transport):
        super().connection_made(transport)
        self.await_headers()

    def on_response_complete(self):
        super().on_response_complete()
        self.await_headers()

    def connection_lost(self, exc):
        super().connection_lost(exc)
        self.header_timer.cancel()

    def await_headers(self):
        if self.header_timer is not None:
            self.header_timer.cancel()
        self.header_timer = self.loop.call_later(self.read_timeout, self.headers_overdue)

    def headers_overdue(self):
        if self.conn.our_state is not h11.SEND_RESPONSE:
            self.transport.close()


@functools.cache
def malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_freed_memory():
    """Give the pages of freed heap memory back to the system (glibc's malloc_trim(0)).

    Why: a body arrives in 64 KB pieces, and those of several connections at once are interleaved
    on the heap with objects that live on; freed, the pieces stay with the process, since a heap
    only shrinks from its top. Ten bodies of 19 MB abandoned mid-upload kept 110 MB that way, for
    good. malloc_trim returns every free page wherever it lies, in every thread's arena.
    """
    trim = malloc_trim()
    if trim is not None:
        trim(0)


async def send_json(send, status, body):
    payload = json.dumps(body).encode()
    # No `connection: close`: uvicorn then reads the rest of the body and discards it, and the client's
    # connection stays open for its next request.
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def media_type(request):
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def unsupported(request):
    got = media_type(request) or "none"
    return BadInput(415, f"Content-Type must be {FORM_TYPE} (an image in the field 'file') or application/json "
                         f"({{\"data\": \"<base64 image>\"}}), not {got}")


def decode_base64(value, where):
    """The bytes of a base64 string (a data: URL as a browser's FileReader makes it is accepted too)."""
    if not isinstance(value, str):
        raise BadInput(400, f"{where} must be a base64 string")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode("".join(value.split()), validate=True)  # line breaks of `base64` allowed
    except (binascii.Error, ValueError):
        raise BadInput(400, f"{where} is not valid base64") from None


async def json_body(request):
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise BadInput(400, "the body is not valid JSON") from None
    except RecursionError:  # "[" * 5000: the parser recurses once per level
        raise BadInput(400, "the JSON body is nested too deeply") from None


async def uploaded(form, field):
    """(file name, bytes) of each file uploaded in `field` of a parsed multipart form."""
    parts = form.getlist(field)
    if any(not isinstance(part, UploadFile) for part in parts):
        raise BadInput(400, f"the form field '{field}' must be a file upload, not text")
    return [(part.filename, await part.read()) for part in parts]


async def one_image(request):
    """(file name or None, bytes) of the single image of a /predict request."""
    kind = media_type(request)
    if kind == FORM_TYPE:
        async with request.form(max_files=MAX_BATCH) as form:  # closing it removes spooled files
            files = await uploaded(form, "file")
        if not files:
            raise BadInput(400, "no file in the form field 'file'")
        if len(files) > 1:
            raise BadInput(400, f"{len(files)} files in the field 'file': /predict takes one, /predict/batch several")
        return files[0]
    if kind in JSON_TYPES:
        doc = await json_body(request)
        if not isinstance(doc, dict) or "data" not in doc:
            raise BadInput(400, 'the JSON body must be an object {"data": "<base64 image>"}')
        return None, decode_base64(doc["data"], "data")
    raise unsupported(request)


async def many_images(request):
    """[(file name or None, bytes)] of a /predict/batch request, at most MAX_BATCH of them."""
    kind = media_type(request)
    if kind == FORM_TYPE:
        async with request.form(max_files=MAX_BATCH) as form:
            files = await uploaded(form, "files")
    elif kind in JSON_TYPES:
        doc = await json_body(request)
        if not isinstance(doc, list) or not all(isinstance(item, dict) and "data" in item for item in doc):
            raise BadInput(400, 'the JSON body must be a list [{"data": "<base64 image>"}, ...]')
        files = [(None, decode_base64(item["data"], f"item {i}: data")) for i, item in enumerate(doc)]
    else:
        raise unsupported(request)
    if not files:
        raise BadInput(400, "no images: send files in the form field 'files' or a non-empty JSON list")
    if len(files) > MAX_BATCH:
        raise BadInput(413, f"{len(files)} images, more than {MAX_BATCH} per request")
    return files


IMAGE_BODY = {
    FORM_TYPE: {"schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary"}}}},
    "application/json": {"schema": {"type": "object", "required": ["data"],
                                    "properties": {"data": {"type": "string", "format": "base64"}}}},
}
BATCH_BODY = {
    FORM_TYPE: {"schema": {"type": "object", "required": ["files"],
                           "properties": {"files": {"type": "array",
                                                    "items": {"type": "string", "format": "binary"}}}}},
    "application/json": {"schema": {"type": "array", "items": IMAGE_BODY["application/json"]["schema"]}},
}
ERRORS = {status: {"description": why, "content": {"application/json": {"example": {"error": why}}}}
          for status, why in [(400, "malformed body"), (413, "body or image too large"),
                              (415, "neither multipart/form-data nor JSON"), (422, "not a readable image")]}


def create_app(model, max_bytes=DEFAULT_MAX_BYTES, max_pixels=DEFAULT_MAX_PIXELS, allowed_hosts=LOOPBACK_HOSTS,
               read_timeout=DEFAULT_READ_TIMEOUT, threads=None):
    """The ASGI app serving `model`: a model file (UsageError when it is not a usable model), or an
    OnnxClassifier already loaded, whose session is shared.

    allowed_hosts: the Host header values answered (serve_settings.trusted_hosts); any other gets
    Starlette's 400 "Invalid host header" before the request reaches the app.
    threads: the CPUs this app may keep busy (by default every one this process may use): its
    decodes at once, and ONNX Runtime's threads for a model file it loads.
    """
    threads = threads or decode_threads()
    classifier = (model.limited(max_pixels) if isinstance(model, OnnxClassifier)
                  else OnnxClassifier(model, max_pixels=max_pixels, threads=threads))
    predictor = Predictor(classifier)
    # Decodes (and /explain, /predict/batch calls) at once: one per CPU bounds the images being
    # decoded, however many requests are waiting; /predict's images are then scored by the batcher.
    limiter = anyio.CapacityLimiter(threads)
    batcher = Batcher(classifier, PREDICT_BATCH)
    page = resources.files(__package__).joinpath(PAGE).read_text(encoding="utf-8")
    app = FastAPI(title="orchestrate serve", version="1",
                  description=f"Image classification with `{classifier.path.name}`: "
                              f"{len(classifier.labels)} labels, input {classifier.preprocess['size']}.")
    app.add_middleware(BodyLimits, max_bytes=max_bytes, timeout=read_timeout)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)  # outermost

    @app.exception_handler(BadInput)
    async def bad_input(request, exc):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):  # 404, 405, a malformed multipart body (400) ...
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(request, exc):
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or e['loc'][0]}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": reasons}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request, exc):  # a fault of the service itself, still answered in JSON
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    @app.get("/health")
    async def health():
        """Liveness: the model is loaded and answers."""
        return {"status": "ok", "model": classifier.path.name, "labels": len(classifier.labels),
                "input_size": classifier.preprocess["size"]}

    @app.get("/labels")
    async def labels():
        """The model's labels, in the order of its output."""
        return {"labels": classifier.labels}

    @app.post("/predict", response_model=Prediction, response_model_exclude_none=True, responses=ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": IMAGE_BODY}})
    async def predict(request: Request, top_k: int = Query(DEFAULT_TOP_K, ge=1, description="labels returned")):
        """Classify one image: a multipart upload in the field `file`, or JSON `{"data": "<base64>"}`."""
        name, data = await one_image(request)
        pixels = await anyio.to_thread.run_sync(predictor.pixels, name, data, limiter=limiter)
        return {"image": name, **predictor.ranked(await batcher.probabilities(pixels), top_k)}

    @app.post("/explain", response_model=Explanation, response_model_exclude_none=True,
              responses={**ERRORS, 501: {"description": "the model has no class activation map (retrain it)"}},
              openapi_extra={"requestBody": {"required": True, "content": IMAGE_BODY}})
    async def explain(request: Request, top_k: int = Query(DEFAULT_TOP_K, ge=1, description="labels returned"),
                      label: str | None = Query(None, description="the label whose map is drawn (default: the "
                                                                  "predicted one)")):
        """Classify one image, as /predict, and show why: the class activation map of the predicted
        class (or `label`) over the image, a PNG data URL in `overlay` (red: what raised the class's
        score most)."""
        name, data = await one_image(request)
        return await anyio.to_thread.run_sync(predictor.explain_one, name, data, top_k, label, limiter=limiter)

    @app.post("/predict/batch", response_model=list[BatchItem], response_model_exclude_none=True,
              responses=ERRORS, openapi_extra={"requestBody": {"required": True, "content": BATCH_BODY}})
    async def predict_batch(request: Request, top_k: int = Query(DEFAULT_TOP_K, ge=1, description="labels returned")):
        """Classify up to 64 images: files in the form field `files`, or a JSON list of `{"data": ...}`.

        The answer has one entry per image, in order; an unreadable image gets an `error` entry and
        the others are still classified, as with `orchestrate predict`.
        """
        items = await many_images(request)
        return await anyio.to_thread.run_sync(predictor.predict_many, items, top_k, limiter=limiter)

    return app


def app_from_environment():
    """create_app with the settings `orchestrate serve` put in CONFIG_ENV: uvicorn's factory for workers.

    The workers share the CPUs this process may use: each gets its share for its decodes and its
    ONNX Runtime session, so that N workers do not run N times as many threads as there are CPUs.
    """
    config = json.loads(os.environ[CONFIG_ENV])
    return create_app(config["model"], max_bytes=config["max_bytes"], max_pixels=config["max_pixels"],
                      allowed_hosts=config["allowed_hosts"], read_timeout=config["read_timeout"],
                      threads=max(1, decode_threads() // config["workers"]))


def run_server(classifier, host="127.0.0.1", port=8000, *, workers=1, max_bytes=DEFAULT_MAX_BYTES,
               max_pixels=DEFAULT_MAX_PIXELS, allowed_hosts=(), max_connections=DEFAULT_MAX_CONNECTIONS,
               read_timeout=DEFAULT_READ_TIMEOUT, on_event=events.ignore):
    """Serve `classifier` (an OnnxClassifier) with uvicorn on host:port until interrupted.

    Everything that can be refused is refused before the server starts, as one UsageError: a bad
    --allowed-host, a port in use. Then one notice event says where it serves, and uvicorn logs the
    requests. With `workers` > 1, each worker process loads the model itself (uvicorn starts them
    from an import string, app_from_environment), the settings handed over in CONFIG_ENV.
    """
    import uvicorn

    hosts = trusted_hosts(host, allowed_hosts)
    model_path = classifier.path.resolve()
    check_port_free(host, port)
    answering = "any Host header" if "*" in hosts else "Host " + ", ".join(hosts)
    banner = f"serving {model_path} on http://{host}:{port}/ (API docs: /docs) for {answering}; Ctrl-C stops"
    if host in EVERY_INTERFACE and "*" not in hosts:
        banner += "\nlistening on every interface: other machines are answered for the names --allowed-host gives"
    # uvicorn answers 503 once the open connections reach its limit, the asking one included.
    limits = {"limit_concurrency": max_connections + 1, "log_level": "info",
              "http": functools.partial(HeaderDeadline, read_timeout=read_timeout)}
    if workers == 1:
        app = create_app(classifier, max_bytes=max_bytes, max_pixels=max_pixels, allowed_hosts=hosts,
                         read_timeout=read_timeout)
        on_event(events.notice(banner))
        uvicorn.run(app, host=host, port=port, **limits)
        return
    os.environ[CONFIG_ENV] = json.dumps({"model": str(model_path), "max_bytes": max_bytes, "max_pixels": max_pixels,
                                         "allowed_hosts": hosts, "read_timeout": read_timeout, "workers": workers})
    on_event(events.notice(banner))
    uvicorn.run("orchestrator.inference.serve:app_from_environment", factory=True, host=host, port=port,
                workers=workers, **limits)
