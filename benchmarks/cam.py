"""Benchmark: what the `cam` output of model.onnx costs a caller that asks only for probabilities.

The model is an untrained ResNet50 at 224 px with `--classes` labels (random weights: the
arithmetic is that of a trained one), exported by the job's own code (remote_scripts.export),
which adds the `cam` output. The same file with that output removed (its Conv node, weights and
graph output) is the baseline. Three sides, ONNX Runtime's default session options (those of
orchestrator.inference.classifier) except that idle threads do not spin: two sessions take turns
here, and one's spinning threads would slow the other's next call:
  without   the file without `cam`, fetching `probabilities`
  unasked   the file with `cam`, fetching `probabilities` only (what predict, score, serve do)
  asked     the file with `cam`, fetching both (what explain does)
Target: unasked costs at most 2% more than without. The sides take turns call by call on the same
input (batch 1: 20 x `--rounds` calls each, batch 32: `--rounds`), the order rotating, so a burst
of load on the shared machine hits them all. Each side's figure is its fastest call (what the
arithmetic costs when nothing interferes; a median here moves by 10% with other users' bursts,
far more than the map's arithmetic) and, beside it, the median.

Run: .venv/bin/python benchmarks/cam.py [--classes 10] [--rounds 8]
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from remote_scripts import imaging  # noqa: E402
from remote_scripts.imaging import CAM_NAME  # noqa: E402

SIZE = 224


def export_models(folder, classes):
    """(path of the ResNet50 file with `cam`, path of the same file without it)."""
    import onnx
    import torch

    from remote_scripts.export import export_onnx
    from remote_scripts.models import build_model

    torch.manual_seed(0)
    labels = [f"class_{i}" for i in range(classes)]
    with_cam = folder / "with_cam.onnx"
    export_onnx(build_model("resnet50", classes).eval(), str(with_cam), labels, imaging.preprocess_spec(SIZE),
                "resnet50", "full")
    model = onnx.load(str(with_cam))
    graph = model.graph
    conv = next(node for node in graph.node if CAM_NAME in node.output)
    graph.node.remove(conv)
    for initializer in [i for i in graph.initializer if i.name in conv.input]:
        graph.initializer.remove(initializer)
    graph.output.remove(next(o for o in graph.output if o.name == CAM_NAME))
    without = folder / "without_cam.onnx"
    onnx.save(model, str(without))
    return with_cam, without


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        with_cam, without = export_models(Path(tmp), args.classes)
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for name, path in (("with", with_cam), ("without", without))}
        sides = {"without": ("without", [imaging.OUTPUT_NAME]),
                 "unasked": ("with", [imaging.OUTPUT_NAME]),
                 "asked": ("with", [imaging.OUTPUT_NAME, CAM_NAME])}
        print(f"ResNet50 {SIZE} px, {args.classes} classes, ONNX Runtime {ort.__version__}, ms per image: "
              "fastest call (median)")
        print(f"{'batch':>5} {'without':>15} {'unasked':>15} {'asked':>15} {'unasked/without':>16} {'asked/without':>14}")
        for batch_size, calls in ((1, 20 * args.rounds), (32, args.rounds)):
            batch = np.random.default_rng(0).normal(size=(batch_size, 3, SIZE, SIZE)).astype(np.float32)
            times = {side: [] for side in sides}
            for session, fetch in sides.values():
                sessions[session].run(fetch, {imaging.INPUT_NAME: batch})  # warm-up
            for call in range(calls):
                for side in list(sides)[call % 3:] + list(sides)[:call % 3]:
                    session, fetch = sides[side]
                    start = time.perf_counter()
                    sessions[session].run(fetch, {imaging.INPUT_NAME: batch})
                    times[side].append((time.perf_counter() - start) / batch_size * 1000)
            fastest = {side: min(t) for side, t in times.items()}
            cells = [f"{fastest[side]:.2f} ({statistics.median(times[side]):.2f})" for side in sides]
            print(f"{batch_size:>5} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} "
                  f"{fastest['unasked'] / fastest['without']:>16.3f} {fastest['asked'] / fastest['without']:>14.3f}")


if __name__ == "__main__":
    main()
