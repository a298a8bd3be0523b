"""Benchmark: decoding large photos to the training resolution, the job's cache vs a plain loader.

300 generated 3000x2000 JPEGs (quality 90, smooth gradients + low-frequency blotches + grain, about
the size of camera photos) are decoded to 224x224 two ways, side by side in one run:
  ours      remote_scripts/imagecache.load_data, the job's real path: content hashing, the
            reduced JPEG decode (PIL draft), the bounded thread window, the cache entry on disk
            (a fresh cache folder, so everything is decoded)
  baseline  torchvision ImageFolder + transforms.Resize((224, 224)) + PILToTensor through a
            DataLoader with as many worker processes as our threads
It prints images/s of both, the ratio (target: at least 3x), and the peak memory of our decode:
the RSS high-water mark of a fresh process that only runs load_data, minus that process's RSS
before it, at 150 and at 300 images (bounded: it must not grow with the image count).

Run: .venv/bin/python benchmarks/decode_throughput.py [--images 300] [--workers N]
(default workers: the CPUs this process may use, cgroup quota included).
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

from remote_scripts import folder_dataset, imagecache  # noqa: E402
from remote_scripts.runtime import Dist  # noqa: E402
from quiet_report import QuietReport  # noqa: E402  (beside this script)

WIDTH, HEIGHT, SIZE = 3000, 2000, 224
LABELS = ("forest", "river")


class PhotoMaker:
    """3000x2000 RGB pictures with the statistics of photos more than of noise: smooth colour
    gradients, blotches at a few scales and a little grain (a JPEG of pure noise decodes at the
    speed of its entropy coder alone, which no camera produces). The blotches and grain are made
    once, larger than a picture; each picture takes its own crop of them and its own gradient."""

    MARGIN = 256

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        height, width = HEIGHT + self.MARGIN, WIDTH + self.MARGIN
        self.texture = np.zeros((height, width, 3), np.float32)
        for cells, strength in ((12, 40), (48, 25), (192, 12)):
            for channel in range(3):
                coarse = rng.uniform(-strength, strength, (cells * height // width + 1, cells + 1)).astype(np.float32)
                self.texture[..., channel] += np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
        self.texture += rng.normal(0, 5, self.texture.shape).astype(np.float32)

    def picture(self, seed):
        rng = np.random.default_rng(seed)
        top, left = rng.integers(0, self.MARGIN, 2)
        across = np.linspace(rng.uniform(40, 215, 3), rng.uniform(40, 215, 3), WIDTH, dtype=np.float32)
        down = np.linspace(np.zeros(3), rng.uniform(-60, 60, 3), HEIGHT, dtype=np.float32)[:, None, :]
        pixels = self.texture[top:top + HEIGHT, left:left + WIDTH] + across + down
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_photos(root, count, workers):
    """root/<label>/photo_NNNN.jpg, in threads (numpy and PIL work without the GIL)."""
    maker = PhotoMaker()
    for label in LABELS:
        (root / label).mkdir(parents=True, exist_ok=True)

    def write(i):
        path = root / LABELS[i % len(LABELS)] / f"photo_{i:04d}.jpg"
        maker.picture(i).save(path, "JPEG", quality=90)
        return path.stat().st_size

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(write, range(count)))


def subset(root, target, count):
    """`count` photos of `root`, as many of each label, as hard links under `target` (no copies)."""
    paths = [path for label in LABELS for path in sorted((root / label).glob("*.jpg"))[:count // len(LABELS)]]
    for path in paths:
        link = target / path.relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, link)
    return target


def peak_rss():
    """This process's RSS high-water mark (VmHWM), bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure_ours(data, workers):
    """Run in a fresh process: (seconds, RSS before, RSS high-water mark) of one load_data."""
    scan = folder_dataset.scan(str(data))
    with tempfile.TemporaryDirectory(prefix="decode-bench-cache-") as cache:
        args = argparse.Namespace(data=str(data), cache_dir=cache, cache_size_gb=1000.0, workers=workers,
                                  image_size=SIZE, val_fraction=0.1, test_fraction=0.1, seed=0)
        before = current_rss()
        started = time.perf_counter()
        dataset = imagecache.load_data(args, scan, Dist(), QuietReport())
        seconds = time.perf_counter() - started
        assert dataset.images.shape == (len(scan.samples), SIZE, SIZE, 3) and not dataset.skipped
        dataset.close()
        return {"images": len(scan.samples), "seconds": seconds, "rss_before": before, "rss_peak": peak_rss()}


def ours_in_subprocess(data, workers):
    """measure_ours in a process of its own, so that its RSS high-water mark is this decode's."""
    out = subprocess.run([sys.executable, __file__, "--measure-ours", str(data), "--workers", str(workers)],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"measuring our decode failed:\n{out.stderr}")
    return json.loads(out.stdout)


def measure_baseline(data, workers):
    """torchvision ImageFolder + Resize((224, 224)) through a DataLoader: images/s."""
    import torch
    from torchvision import datasets, transforms

    folder = datasets.ImageFolder(str(data), transform=transforms.Compose(
        [transforms.Resize((SIZE, SIZE)), transforms.PILToTensor()]))
    loader = torch.utils.data.DataLoader(folder, batch_size=32, num_workers=workers)
    started = time.perf_counter()
    seen = sum(len(labels) for _, labels in loader)
    return {"images": seen, "seconds": time.perf_counter() - started}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--workers", type=int, default=imagecache.available_cpus())
    parser.add_argument("--measure-ours", metavar="DATA", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.measure_ours:
        print(json.dumps(measure_ours(args.measure_ours, args.workers)))
        return

    with tempfile.TemporaryDirectory(prefix="decode-bench-") as tmp:
        full = Path(tmp) / "photos"
        started = time.perf_counter()
        nbytes = make_photos(full, args.images, args.workers)
        print(f"generated {args.images} JPEGs of {WIDTH}x{HEIGHT}, quality 90, {nbytes / args.images / 1e6:.2f} MB "
              f"each on average, in {time.perf_counter() - started:.0f} s; {args.workers} workers", flush=True)
        half = subset(full, Path(tmp) / "half", args.images // 2)

        baseline = measure_baseline(full, args.workers)
        ours = ours_in_subprocess(full, args.workers)
        ours_half = ours_in_subprocess(half, args.workers)

    ours_rate = ours["images"] / ours["seconds"]
    baseline_rate = baseline["images"] / baseline["seconds"]
    print(f"\n{'decode to 224 px':<58}{'images':>8}{'seconds':>10}{'images/s':>10}")
    print(f"{'baseline: ImageFolder + Resize((224,224)) + DataLoader':<58}{baseline['images']:>8}"
          f"{baseline['seconds']:>10.2f}{baseline_rate:>10.1f}")
    print(f"{'ours: imagecache.load_data (hash, draft decode, cache)':<58}{ours['images']:>8}"
          f"{ours['seconds']:>10.2f}{ours_rate:>10.1f}")
    print(f"ratio ours/baseline: {ours_rate / baseline_rate:.2f}x (target >= 3x)")
    print("\npeak memory of our decode (RSS high-water mark minus RSS before load_data):")
    for row in (ours_half, ours):
        print(f"  {row['images']:>5} images: {(row['rss_peak'] - row['rss_before']) / 2**20:7.1f} MiB "
              f"(process peak {row['rss_peak'] / 2**20:.0f} MiB; the images alone are "
              f"{row['images'] * SIZE * SIZE * 3 / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
