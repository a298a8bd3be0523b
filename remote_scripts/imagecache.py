"""The decoded-image cache of the training job: every image decoded once, batches made on the device.

Why a cache instead of a DataLoader that decodes every epoch: the scan must open every file
anyway (to find unreadable ones before the split), so it keeps the pixels, resized to the input
size, in a memory-mapped uint8 file (datasets larger than RAM work); augmentation then runs
batched on the GPU, and no worker processes need shared memory (Docker's /dev/shm is 64 MB).
Normalized batches equal imaging.preprocess's output exactly (tests/test_train_script.py).
"""
import hashlib
import json
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

try:  # imported as remote_scripts.imagecache (tests)
    from . import folder_dataset, imaging
except ImportError:  # beside train.py, started as a script
    import folder_dataset
    import imaging

CROP_SCALE = (0.35, 1.0)  # augmentation: random crops keep this fraction of the image area
SKIPPED_IN_EVENTS = 100   # files listed in a skipped event; metrics.json lists all
SPACE_MARGIN = 64 << 20   # free space left over after the cache: the .npy header, other writers


class Data:
    """The decoded dataset: uint8 images [N, S, S, 3] (memory-mapped), labels [N], split indices."""

    def __init__(self, classes, paths, labels, images, train, val, test, skipped, spec):
        self.classes, self.paths, self.labels, self.images = classes, paths, labels, images
        self.train, self.val, self.test = train, val, test
        self.skipped, self.spec = skipped, spec

    def sizes(self):
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def split_digest(self):
        """Identifies classes and split, so that a checkpoint resumes only on the very same ones."""
        parts = [[self.paths[i] for i in part] for part in (self.train, self.val, self.test)]
        return hashlib.sha256(json.dumps([self.classes, parts]).encode()).hexdigest()[:16]


def decode(path, spec):
    """The uint8 pixels [H, W, 3] that imaging.preprocess starts from."""
    return imaging.resize(imaging.load_rgb(path), spec)


def decode_all(root, relpaths, out, spec, workers, on_done):
    """Decode every image into `out`; return a reason per file that cannot be read, else None.

    Threads are enough: Pillow releases the GIL while it decodes and resizes.
    """
    def work(i):
        try:
            out[i] = decode(os.path.join(root, relpaths[i]), spec)
            return None
        except imaging.DECODE_ERRORS as exc:
            # PIL names the file as opened; the report names it relative to --data, like `path`.
            return imaging.describe_decode_error(exc).replace(os.path.join(root, relpaths[i]), relpaths[i])

    reasons = []
    if workers == 0:
        for i in range(len(relpaths)):
            reasons.append(work(i))
            on_done(len(reasons))
        return reasons
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for reason in pool.map(work, range(len(relpaths))):
            reasons.append(reason)
            on_done(len(reasons))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on SIGTERM, do not finish the queue first
    return reasons


def check_free_space(cache_dir, nbytes):
    """Raise DatasetError unless `cache_dir` has room for a cache of `nbytes`.

    The memory-mapped cache is created sparse: a disk that fills up while decoding kills the
    job with SIGBUS and no message at all, so the space is checked before the first image.
    """
    free = shutil.disk_usage(cache_dir).free
    if free < nbytes + SPACE_MARGIN:
        raise folder_dataset.DatasetError(
            f"the decoded-image cache needs {_size(nbytes + SPACE_MARGIN)} of free space in {cache_dir}, "
            f"which has {_size(free)}; point --cache-dir at a larger disk (or lower --image-size)")


def _size(nbytes):
    return f"{nbytes / (1 << 30):.1f} GiB" if nbytes >= 1 << 30 else f"{nbytes / (1 << 20):.0f} MiB"


def load_data(args, scan, dist, report, cache_dir):
    """Decode the scanned images once, report unreadable ones, split. Raises DatasetError."""
    relpaths = [path for path, _ in scan.samples]
    labels = np.array([label for _, label in scan.samples], dtype=np.int64)
    spec = imaging.preprocess_spec(args.image_size)
    size = args.image_size
    report.log(f"found {len(relpaths)} images in {len(scan.classes)} classes under {args.data}; "
               f"decoding at {size}x{size}")

    # One cache per machine: local rank 0 decodes, the other processes there map the same file.
    cache_path = os.path.join(cache_dir, "images.npy")
    reasons_path = os.path.join(cache_dir, "unreadable.json")
    if dist.local_rank == 0:
        check_free_space(cache_dir, len(relpaths) * size * size * 3)
        images = np.lib.format.open_memmap(cache_path, mode="w+", dtype=np.uint8,
                                           shape=(len(relpaths), size, size, 3))
        throttle = report.throttle("scan", len(relpaths))
        reasons = decode_all(args.data, relpaths, images, spec, args.workers, throttle.update)
        images.flush()
        with open(reasons_path, "w") as f:
            json.dump(reasons, f)
    dist.barrier()
    if dist.local_rank != 0:
        images = np.load(cache_path, mmap_mode="r")
        with open(reasons_path) as f:
            reasons = json.load(f)

    skipped = [{"path": relpaths[i], "reason": r} for i, r in enumerate(reasons) if r is not None]
    if skipped:
        report.log(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]['path']}: "
                   f"{skipped[0]['reason']}")
        report.event("skipped", files=skipped[:SKIPPED_IN_EVENTS], count=len(skipped))

    usable = [(relpaths[i], int(labels[i])) for i, r in enumerate(reasons) if r is None]
    train, val, test = folder_dataset.stratified_split(
        usable, scan.classes, args.val_fraction, args.test_fraction, args.seed)
    index = {path: i for i, path in enumerate(relpaths)}

    def indices(part):
        return np.array([index[path] for path, _ in part], dtype=np.int64)

    return Data(scan.classes, relpaths, labels, images, indices(train), indices(val), indices(test),
                skipped, spec)


class Batches:
    """Dataset indices -> normalized float batches on the device, as imaging.preprocess computes them."""

    def __init__(self, data, device, channels_last):
        self.data, self.device, self.channels_last = data, device, channels_last
        self.scale = float(np.float32(data.spec["scale"]))
        self.mean = torch.tensor(data.spec["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(data.spec["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def pixels(self, idx):
        """float32 [B, 3, S, S] with values 0..255, on the device."""
        batch = torch.from_numpy(np.ascontiguousarray(self.data.images[idx]))
        return batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()

    def normalize(self, x):
        x = (x * self.scale - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def images(self, idx):
        return self.normalize(self.pixels(idx))

    def labels(self, idx):
        return torch.from_numpy(self.data.labels[idx]).to(self.device, non_blocking=True)


def augment(x, generator, hflip):
    """Random resized crop (+ horizontal flip) of a batch, as one batched resampling on its device.

    It crops the cached images, which are already at the input size: cheaper than cropping the
    originals, at some loss of detail in the zoomed crops. The boxes come from `generator`, so a
    resumed epoch draws the same ones.
    """
    n = x.shape[0]

    def uniform(low, high):
        return torch.rand(n, generator=generator) * (high - low) + low

    area = uniform(*CROP_SCALE)
    ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    shift_x = uniform(-1, 1) * (1 - width)
    shift_y = uniform(-1, 1) * (1 - height)
    flip = torch.ones(n)
    if hflip:
        flip = 1.0 - 2.0 * (torch.rand(n, generator=generator) < 0.5).float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = shift_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = shift_y
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
