"""`orchestrate serve`: put a trained model behind HTTP, a shell over orchestrator.model.Model.serve."""
import click

from ..inference.serve_settings import (DEFAULT_MAX_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PIXELS,
                                        DEFAULT_READ_TIMEOUT)
from .predict import FP32_HELP, open_model


@click.command()
@click.argument("model", metavar="MODEL_OR_RUN")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 makes the service reachable from other machines.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes, each with its own ONNX Runtime session. One already keeps every "
                   "core busy with predictions; more pay only on many-core machines, where request "
                   "parsing in one process becomes the limit.")
@click.option("--max-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_BYTES, show_default=True,
              help="Largest request body accepted (413 beyond).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest image accepted, in pixels, read from its header before decoding (413 beyond).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Also answer requests whose Host header is NAME (repeatable; '*.example.com' for its "
                   "subdomains, '*' for any, behind a proxy that checks Host itself). By default only "
                   "localhost, 127.0.0.1, [::1] and the --host address: other names get 400, so that no web "
                   "page can reach the service through a name of its own (DNS rebinding).")
@click.option("--max-connections", type=click.IntRange(min=1), default=DEFAULT_MAX_CONNECTIONS, show_default=True,
              help="Connections open at once, per worker process; a request while more are open gets 503.")
@click.option("--read-timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_READ_TIMEOUT,
              show_default=True, metavar="SECONDS",
              help="Time a client has to send a request's headers (from its connection or its last answer "
                   "on), and then its body; beyond, the connection is closed (after a 408 for a body).")
@click.option("--fp32", is_flag=True, help=FP32_HELP)
def serve(model, host, port, workers, max_bytes, max_pixels, allowed_hosts, max_connections, read_timeout, fp32):
    """Serve a model file or the model of a run over HTTP, with a web page at /.

    \b
    Endpoints: POST /predict (multipart field `file`, or JSON {"data": "<base64>"}; ?top_k=5),
    POST /predict/batch, GET /labels, GET /health, GET /docs (OpenAPI).

    \b
    Examples:
      orchestrate serve digits-20261123-101500-ab12
      orchestrate serve runs/RUN/outputs/model.onnx --port 9000
      curl -F file=@seven.png http://127.0.0.1:8000/predict
    """
    open_model(model, fp32).serve(host, port, workers=workers, max_bytes=max_bytes, max_pixels=max_pixels,
                       allowed_hosts=allowed_hosts, max_connections=max_connections, read_timeout=read_timeout,
                       on_event=lambda event: click.echo(event["message"], err=True))
