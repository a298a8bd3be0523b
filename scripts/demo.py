"""`make demo`: train on a small real dataset with the local backend, then predict an image.

The data is scikit-learn's bundled handwritten digits (1,797 8x8 scans, 10 classes), written
as PNG folders, so the demo needs no download and no cloud account.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path("data/digits")
HOLDOUT = Path("data/digits-holdout")
ORCHESTRATE = Path(sys.executable).with_name("orchestrate")
# Small enough to finish in a few minutes on a 2-core CPU; override with DEMO_ARGS.
TRAIN_ARGS = os.environ.get(
    "DEMO_ARGS", "--arch resnet50 --weights none --mode linear --image-size 32 --epochs 30 --batch-size 64").split()
HOLDOUT_PER_CLASS = 3


def export_digits():
    """Write the digits as 32x32 PNGs: DATA/<digit>/<n>.png, a few per class kept aside."""
    if (DATA / ".complete").exists():
        return
    from sklearn.datasets import load_digits

    shutil.rmtree(DATA, ignore_errors=True)
    shutil.rmtree(HOLDOUT, ignore_errors=True)
    digits = load_digits()
    seen = {}
    for n, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        seen[target] = seen.get(target, 0) + 1
        root = HOLDOUT if seen[target] <= HOLDOUT_PER_CLASS else DATA
        folder = root / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((255 - pixels * (255 / 16)).astype(np.uint8), "L")
        image.resize((32, 32), Image.BILINEAR).save(folder / f"{n:04d}.png")
    (DATA / ".complete").touch()


def orchestrate(*args):
    print("$ orchestrate " + " ".join(args), flush=True)
    if "--json" not in args:
        subprocess.run([str(ORCHESTRATE), *args], check=True)
        return None
    return subprocess.run([str(ORCHESTRATE), *args], check=True, stdout=subprocess.PIPE, text=True).stdout


def main():
    started = time.monotonic()
    export_digits()
    print(f"dataset: {DATA} ({sum(1 for _ in DATA.rglob('*.png'))} images, 10 classes); "
          f"held out: {HOLDOUT}", flush=True)
    # --json: progress is still shown (on stderr); stdout carries the result with the run id.
    result = orchestrate("train", str(DATA), "--backend", "local", "--name", "digits", *TRAIN_ARGS, "--json")
    run_id = json.loads(result)["run_id"]
    sample = sorted((HOLDOUT / "7").glob("*.png"))[0]
    orchestrate("predict", run_id, str(sample), "--top-k", "3")
    orchestrate("evaluate", run_id, str(HOLDOUT))
    print(f"demo finished in {time.monotonic() - started:.0f}s", flush=True)


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
