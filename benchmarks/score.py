"""Benchmark: `orchestrate score` on a folder of photos against two ONNX Runtime baselines, same run.

The model is an untrained ResNet50 at 224 px (random weights: no download here; the arithmetic is
that of a trained one), exported by the job's own code (remote_scripts.export.export_onnx), with
10 labels. The data: `--images` generated JPEGs (500 by default) of `--photo` pixels (400x300,
quality 90: smooth gradients, blotches and grain, photo-like rather than noise, so decoding costs
what it costs on real photos). Four ways to classify them all, with the same model file:
  ours      what `orchestrate score` runs once its model is loaded: inference.score.score_to_file
            with an OnnxClassifier (decode threads overlapped with batched inference, the rows
            written to a CSV that is renamed into place)
  sdk       the Python API on the whole list: orchestrator.Model(path).predict(list_of_paths), the
            same batched, overlapped stream as ours, returning Prediction objects instead of rows
  loop      one image at a time: imaging.preprocess_file (the same decode) then session.run on a
            batch of 1, in a plain for loop, with ONNX Runtime's default session options: the
            script one would write without orchestrate (target: ours >= 1.15x)
  ceiling   batched session.run alone (batches of `--batch-size`, the command's default) on
            tensors decoded beforehand, in a session with the classifier's own options
            (orchestrator.inference.classifier: a thread per CPU this process may use): what our
            inference costs with no decoding at all, an upper bound for ours (target: ours and
            sdk >= 90% of it)
Each gets one warm-up call before the clock starts. The build machine is shared with other
engineers' tests, whose bursts slow a minute of work several times over, so the four take turns
on chunks of `--chunk` images (the order rotating), each over all the images, `--repeats` times:
every side sees the same load, and images/s is each side's images over its summed seconds. At
the end the real command runs once in a subprocess; its own images/s and its whole wall time
(process start and model load included) are printed too, with the load average before and after.

With --int8 the four sides classify with the int8 model of the same file instead
(orchestrator.inference.quantize.quantize_model, calibrated on 64 of the photos, gate off: speed
only), so each model is held to its own ceiling.

Run: .venv/bin/python benchmarks/score.py [--images 500] [--photo 400x300] [--chunk 50] [--repeats 3]
     [--int8] [--json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.inference.classifier import BATCH_SIZE, decode_threads  # noqa: E402
from remote_scripts import imaging  # noqa: E402

ORCHESTRATE = Path(sys.executable).with_name("orchestrate")
SIZE = 224
LABELS = [f"class_{i}" for i in range(10)]


def export_model(path):
    """An untrained ResNet50 classifier as the job exports it (softmax output, our metadata)."""
    import torch

    from remote_scripts.export import export_onnx
    from remote_scripts.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet50", len(LABELS)).eval()
    export_onnx(model, str(path), LABELS, imaging.preprocess_spec(SIZE), "resnet50", "full")


def make_photos(folder, count, width, height, workers):
    """folder/photo_NNNN.jpg: a shared texture (blotches at three scales, grain) cropped differently
    under each picture's own colour gradient; written in threads (PIL and numpy release the GIL)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    margin = 64
    texture = np.zeros((height + margin, width + margin, 3), np.float32)
    for cells, strength in ((4, 40), (16, 25), (64, 12)):
        for channel in range(3):
            coarse = rng.uniform(-strength, strength, (cells, cells)).astype(np.float32)
            texture[..., channel] += np.asarray(Image.fromarray(coarse).resize((width + margin, height + margin),
                                                                               Image.BICUBIC))
    texture += rng.normal(0, 5, texture.shape).astype(np.float32)

    def write(i):
        r = np.random.default_rng(i)
        top, left = r.integers(0, margin, 2)
        across = np.linspace(r.uniform(40, 215, 3), r.uniform(40, 215, 3), width, dtype=np.float32)
        pixels = texture[top:top + height, left:left + width] + across
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        return path.stat().st_size

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(write, range(count)))


def session(model):
    """An ONNX Runtime session with the default options."""
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=ort.get_available_providers())


class Ours:
    """The command's scoring, after its model load: score_to_file on an OnnxClassifier."""

    def __init__(self, model, out):
        from orchestrator.inference.classifier import OnnxClassifier

        self.classifier = OnnxClassifier(model)
        self.out = out

    def warm_up(self, paths):
        self.classifier.classify(paths[:1])

    def __call__(self, paths, tensors):
        from orchestrator.inference.score import score_to_file

        summary = score_to_file(self.classifier, paths, self.out)
        assert summary["scored"] == len(paths), summary


class Sdk:
    """The Python API: Model(path).predict on the list of paths."""

    def __init__(self, model):
        from orchestrator import Model

        self.model = Model(model)

    def warm_up(self, paths):
        self.model.predict(paths[:1])

    def __call__(self, paths, tensors):
        predictions = self.model.predict(paths)
        assert len(predictions) == len(paths) and not any(p.error for p in predictions)


class Loop:
    """One image at a time: decode, then a batch of 1 through ONNX Runtime."""

    def __init__(self, model, spec):
        self.session, self.spec = session(model), spec
        self.name = self.session.get_inputs()[0].name

    def warm_up(self, paths):
        self(paths[:1], None)

    def __call__(self, paths, tensors):
        for path in paths:
            self.session.run(None, {self.name: imaging.preprocess_file(path, self.spec)[None]})


class Ceiling:
    """Batched inference alone, on tensors decoded beforehand."""

    def __init__(self, model, batch_size):
        from orchestrator.inference.classifier import OnnxClassifier

        self.session, self.batch_size = OnnxClassifier(model).session, batch_size
        self.name = self.session.get_inputs()[0].name

    def warm_up(self, paths):
        self.session.run(None, {self.name: np.zeros((self.batch_size, 3, SIZE, SIZE), np.float32)})

    def __call__(self, paths, tensors):
        for i in range(0, len(tensors), self.batch_size):
            self.session.run(None, {self.name: np.stack(tensors[i:i + self.batch_size])})


def measure_command(model, photos, out):
    """The real command once: its own images/s and its whole wall time (process start included)."""
    started = time.perf_counter()
    result = subprocess.run([str(ORCHESTRATE), "score", str(model), str(photos), "--out", str(out), "--force",
                             "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"orchestrate score failed:\n{result.stderr}")
    return json.loads(result.stdout)["images_per_second"], wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--photo", default="400x300", help="WIDTHxHEIGHT of the generated JPEGs (>= 224 each)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="the ceiling's batch size")
    parser.add_argument("--chunk", type=int, default=50, help="images per turn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--int8", action="store_true", help="classify with the int8 model of the same file")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object too")
    args = parser.parse_args()
    width, height = map(int, args.photo.lower().split("x"))
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp:
        tmp = Path(tmp)
        model = tmp / "model.onnx"
        started = time.perf_counter()
        export_model(model)
        exported = time.perf_counter() - started
        photos = tmp / "photos"
        nbytes = make_photos(photos, args.images, width, height, decode_threads())
        paths = sorted(str(p) for p in photos.iterdir())
        if args.int8:
            from orchestrator.inference.quantize import quantize_model

            calibration = paths[:64]
            model = Path(quantize_model(model, calibration, calibration, [0] * len(calibration),
                                        out=tmp / "model.int8.onnx", gate=False)["path"])
        spec = json.loads(session(model).get_modelmeta().custom_metadata_map[imaging.PREPROCESS_KEY])
        started = time.perf_counter()
        with ThreadPoolExecutor(decode_threads()) as pool:
            tensors = list(pool.map(lambda p: imaging.preprocess_file(p, spec), paths))
        decode_rate = len(paths) / (time.perf_counter() - started)
        print(f"ResNet50 exported in {exported:.1f} s; {args.images} JPEGs of {width}x{height}, "
              f"{nbytes / args.images / 1e3:.0f} kB each; decode alone {decode_rate:.0f} images/s on "
              f"{decode_threads()} threads; load average {load_before[0]:.2f}", flush=True)

        sides = {"ceiling": Ceiling(model, args.batch_size), "loop": Loop(model, spec),
                 "ours": Ours(model, tmp / "predictions.csv"), "sdk": Sdk(model)}
        for side in sides.values():
            side.warm_up(paths)
        seconds = dict.fromkeys(sides, 0.0)
        turn = 0
        for repeat in range(args.repeats):
            for start in range(0, len(paths), args.chunk):
                names = list(sides)[turn % len(sides):] + list(sides)[:turn % len(sides)]
                turn += 1
                for name in names:
                    began = time.perf_counter()
                    sides[name](paths[start:start + args.chunk], tensors[start:start + args.chunk])
                    seconds[name] += time.perf_counter() - began
            done = (repeat + 1) * len(paths)
            print(f"  after pass {repeat + 1}: " + "  ".join(f"{name} {done / seconds[name]:.1f}" for name in sides)
                  + " images/s", flush=True)
        del tensors, sides
        command_rate, wall = measure_command(model, photos, tmp / "predictions.csv")

    rate = {name: args.repeats * len(paths) / s for name, s in seconds.items()}
    load_after = os.getloadavg()
    title = f"classify {args.images} photos, ResNet50 at 224 px{', int8' if args.int8 else ''}"
    print(f"\n{title:<62}{'images/s':>10}")
    ceiling = f"ceiling: batched session.run on pre-decoded tensors, {args.batch_size}"
    print(f"{ceiling:<62}{rate['ceiling']:>10.1f}")
    print(f"{'loop: decode + session.run one image at a time (ORT defaults)':<62}{rate['loop']:>10.1f}")
    print(f"{'ours: what orchestrate score runs (decode threads + batches)':<62}{rate['ours']:>10.1f}")
    print(f"{'sdk: Model(path).predict(list of paths)':<62}{rate['sdk']:>10.1f}")
    print(f"ours / loop:    {rate['ours'] / rate['loop']:.2f}x (target >= 1.15x); sdk / loop "
          f"{rate['sdk'] / rate['loop']:.2f}x")
    print(f"ours / ceiling: {rate['ours'] / rate['ceiling']:.1%} (target >= 90%); sdk / ceiling "
          f"{rate['sdk'] / rate['ceiling']:.1%}")
    print(f"the command itself, once: {command_rate:.1f} images/s by its own count, {wall:.1f} s in all "
          f"(process start, model load, scoring); load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after (1 min)")
    if args.json:
        print(json.dumps({"images_per_second": rate, "ours_over_loop": rate["ours"] / rate["loop"],
                          "ours_over_ceiling": rate["ours"] / rate["ceiling"],
                          "sdk_over_ceiling": rate["sdk"] / rate["ceiling"], "command_images_per_second": command_rate,
                          "command_wall_seconds": wall, "load_average": [load_before[0], load_after[0]]}))


if __name__ == "__main__":
    main()
