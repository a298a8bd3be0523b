"""Train on a folder of labeled images with the local backend, then predict, all from Python.

    python examples/train_and_predict.py DATA [IMAGE]

DATA holds one sub-folder of images per label (`make demo` writes one: data/digits). The run is
small on purpose (no pretrained weights, 32-pixel images, linear mode): a minute on a laptop CPU.
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import orchestrator


def main(data, image=None):
    try:  # every error orchestrate raises on purpose is an OrchestrateError, with a one-line message
        orchestrator.train(data + "-missing", backend="local")
    except orchestrator.DatasetError as exc:
        print(f"as expected: {exc}")

    run = orchestrator.train(data, backend="local", weights="none", mode="linear", image_size=32, epochs=5,
                             batch_size=64, name="example")
    print(f"started {run.id} in {run.folder}")
    run.wait(progress=True)  # raises orchestrator.JobFailed if the job fails
    print(f"{run.status}: test accuracy {run.metrics['accuracy']:.3f} after {len(run.history)} epochs")

    model = run.model()
    print(f"labels: {model.labels}")
    if image is None:  # the first image of the first label
        image = next(path for path in sorted(Path(data).rglob("*")) if path.suffix.lower() in (".png", ".jpg", ".jpeg"))
    first = model.predict(image, top_k=3)[0]
    print(f"{image}: {first.label} ({first.score:.3f}); top 3: {first.top_k}")

    pixels = np.asarray(Image.open(image).convert("RGB"))  # an image in memory: an HxWx3 uint8 array
    same = model.predict(pixels)[0]
    assert same.label == first.label, (same, first)
    print(f"the same image as an array: {same.label} ({same.score:.3f})")
    print(f"report: {run.report()}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
