"""`orchestrate serve`: put a trained model behind HTTP (the app: orchestrator.inference.serve)."""
import json
import os

import click

from ..inference.serve_settings import CONFIG_ENV, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, check_port_free
from .predict import resolve_model


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
def serve(model, host, port, workers, max_bytes, max_pixels):
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
    import uvicorn

    model_path = resolve_model(model).resolve()
    check_port_free(host, port)
    banner = f"serving {model_path} on http://{host}:{port}/ (API docs: /docs); Ctrl-C stops"
    if workers == 1:
        from ..inference.serve import create_app  # fastapi: loaded by the command, not by --help

        app = create_app(model_path, max_bytes=max_bytes, max_pixels=max_pixels)  # a bad model fails here
        click.echo(banner, err=True)
        uvicorn.run(app, host=host, port=port, log_level="info")
        return
    from ..inference.classifier import OnnxClassifier

    OnnxClassifier(model_path)  # a bad model fails here, in one line, rather than in every worker
    # Worker processes build their own app from an import string; the settings travel in the environment.
    os.environ[CONFIG_ENV] = json.dumps({"model": str(model_path), "max_bytes": max_bytes, "max_pixels": max_pixels})
    click.echo(banner, err=True)
    uvicorn.run("orchestrator.inference.serve:app_from_environment", factory=True, host=host, port=port,
                workers=workers, log_level="info")
