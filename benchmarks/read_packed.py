"""Benchmark: images/s delivered to the model by train.py from a packed dataset, against torchvision
ImageFolder over the loose files, with the same number of workers.

The same generated JPEGs (~3 KB, 10 labels) are read as
  packed cold   train.load_data on the packed folder with an empty decoded-image cache (labels and
                digests from the index, each image read from its shard at its offset and decoded
                into the cache), then every image as a normalized float batch (imagecache.Batches)
  packed warm   the same again: the cache entry is found, nothing is decoded
  loose cold    train.load_data on the loose folder, fresh cache (hashes every file, then decodes)
  ImageFolder   torchvision.datasets.ImageFolder + DataLoader(num_workers=W): Resize, ToTensor,
                Normalize every epoch (epoch 1 and epoch 2; it has no cache)
and prints images/s with the ratios packed cold / ImageFolder epoch 1 (target >= 1) and packed
warm / ImageFolder epoch 2 (target >= 10). The OS page cache is warm for every run (dropping it
would disturb the other users of the machine), so "cold" means an empty decoded-image cache.

Run: .venv/bin/python benchmarks/read_packed.py [--files 10000] [--workers 2] [--image-size 64] [--json]
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from quiet_report import QuietReport  # noqa: E402  (beside this script)
BATCH = 64


def job_args(data, cache, size, workers):
    from remote_scripts import train

    return train.parse_args(["--data", str(data), "--output", str(cache.parent / "out"), "--cache-dir", str(cache),
                             "--image-size", str(size), "--workers", str(workers)])


def through_load_data(data, cache, size, workers):
    """(seconds, images) for load_data plus every image delivered as a normalized batch."""
    import numpy as np
    import torch

    from remote_scripts import train
    from remote_scripts.imagecache import Batches
    from remote_scripts.runtime import Dist

    started = time.perf_counter()
    dataset = train.load_data(job_args(data, cache, size, workers), Dist(), QuietReport())
    batches = Batches(dataset, torch.device("cpu"), channels_last=False)
    every = np.arange(len(dataset.paths))
    for start in range(0, len(every), BATCH):
        batches.images(every[start:start + BATCH])
    seconds = time.perf_counter() - started
    dataset.close()
    return seconds, len(every)


def through_image_folder(data, size, workers):
    import torch
    from torchvision import datasets, transforms

    from remote_scripts import imaging

    transform = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                    transforms.Normalize(imaging.IMAGENET_MEAN, imaging.IMAGENET_STD)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(data), transform=transform), batch_size=BATCH,
                                         num_workers=workers)
    started = time.perf_counter()
    count = sum(len(labels) for _, labels in loader)
    return time.perf_counter() - started, count


def run(work, files, workers, size):
    import torch

    from orchestrator.dataset.pack import pack_dataset
    from upload_azurite import make_images

    torch.set_num_threads(max(1, workers))
    os.environ["XDG_STATE_HOME"] = str(work / "state")
    loose = make_images(work / "loose", files, size=58)
    pack_dataset(loose, work / "packed")
    # warm-up on a small copy: imports and first-call costs are measured on neither side
    small = make_images(work / "small", 100, size=58)
    pack_dataset(small, work / "small-packed")
    through_image_folder(small, size, workers)
    through_load_data(work / "small-packed", work / "cache-small", size, workers)
    rows = {}
    load_before = os.getloadavg()
    for name, measure in (
            ("ImageFolder epoch 1", lambda: through_image_folder(loose, size, workers)),
            ("ImageFolder epoch 2", lambda: through_image_folder(loose, size, workers)),
            ("packed cold", lambda: through_load_data(work / "packed", work / "cache-packed", size, workers)),
            ("packed warm", lambda: through_load_data(work / "packed", work / "cache-packed", size, workers)),
            ("loose cold", lambda: through_load_data(loose, work / "cache-loose", size, workers))):
        seconds, count = measure()
        rows[name] = {"seconds": round(seconds, 2), "images": count, "images_per_s": round(count / seconds)}
    report = {"files": files, "workers": workers, "image_size": size, "runs": rows,
              "load_average": [load_before, os.getloadavg()],
              "cold_ratio": round(rows["packed cold"]["images_per_s"] / rows["ImageFolder epoch 1"]["images_per_s"], 2),
              "warm_ratio": round(rows["packed warm"]["images_per_s"] / rows["ImageFolder epoch 2"]["images_per_s"], 1)}
    report["targets"] = {"cold_at_least_as_fast": report["cold_ratio"] >= 1, "warm_at_least_10x": report["warm_ratio"] >= 10}
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = run(Path(tmp), args.files, args.workers, args.image_size)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['files']} JPEGs at {report['image_size']} px, {report['workers']} workers, load average "
          f"{report['load_average'][0][0]:.2f} -> {report['load_average'][1][0]:.2f}")
    for name, row in report["runs"].items():
        print(f"  {name:<20} {row['seconds']:>7.2f} s {row['images_per_s']:>8} images/s")
    print(f"packed cold / ImageFolder epoch 1: {report['cold_ratio']}x; "
          f"packed warm / ImageFolder epoch 2: {report['warm_ratio']}x")
    for name, met in report["targets"].items():
        print(f"  target {name}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
