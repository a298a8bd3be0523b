"""Helpers of the `orchestrate serve` tests: a real tiny model and a real server process.

    train_tiny_model(root) -> (model.onnx, the generated dataset)
    with running_server(model, *options) as base_url: ...
    with server_process(model, *options) as (base_url, process): ...   (its pid, for its memory)

The model is trained by remote_scripts/train.py itself (resnet18, random weights, 32 px, linear
mode: seconds on a CPU), so it carries the labels and preprocessing metadata of a real run. The
server is `orchestrate serve` in a subprocess on a free loopback port, ready once /health answers.
"""
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from conftest import ORCHESTRATE, REPO
from imagegen import make_dataset

TRAIN = REPO / "remote_scripts" / "train.py"


def train_tiny_model(root, classes=("red", "green", "blue")):
    root = Path(root)
    data = make_dataset(root / "data", classes=classes, per_class=10)
    out = root / "out"
    subprocess.run([sys.executable, str(TRAIN), "--data", str(data), "--output", str(out), "--arch", "resnet18",
                    "--weights", "none", "--image-size", "32", "--mode", "linear", "--epochs", "3",
                    "--batch-size", "16", "--workers", "1", "--cache-dir", str(root / "cache")],
                   check=True, capture_output=True, timeout=300)
    return out / "model.onnx", data


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(model, *options, timeout=60, log_path=None):
    """`orchestrate serve MODEL --port P OPTIONS` until the block ends; yields its base URL."""
    with server_process(model, *options, timeout=timeout, log_path=log_path) as (base_url, _):
        yield base_url


@contextmanager
def server_process(model, *options, timeout=60, log_path=None):
    """`orchestrate serve MODEL --port P OPTIONS` until the block ends; yields (base URL, its Popen).

    The server's output goes to log_path (by default serve-PORT.log beside the model) and is
    quoted when it does not come up within `timeout` seconds.
    """
    port = free_port()
    log_path = Path(log_path) if log_path else Path(model).with_name(f"serve-{port}.log")
    with open(log_path, "w") as log:
        server = subprocess.Popen([str(ORCHESTRATE), "serve", str(model), "--port", str(port), *map(str, options)],
                                  stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise AssertionError(f"orchestrate serve exited with {server.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer from /health within {timeout}s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield base_url, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
