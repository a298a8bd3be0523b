"""The decoded-image cache of the training job: every image decoded once, batches made on the device.

Why a cache instead of a DataLoader that decodes every epoch: the scan must open every file
anyway (to find unreadable ones before the split), so it keeps the pixels, resized to the input
size, in a memory-mapped uint8 file (datasets larger than RAM work); augmentation then runs
batched on the device, and no worker processes need shared memory (Docker's /dev/shm is 64 MB).
The file is an entry of the persistent cache of cache_store.py, so a resumed or repeated run on
the same data skips the decoding altogether. Normalized batches equal imaging.preprocess_file's
output exactly (tests/test_image_cache.py, tests/test_train_script.py).
"""
import hashlib
import json
import math
import os
import queue
import shutil
import signal
import threading

import numpy as np
import torch
import torch.nn.functional as F

from . import cache_store, folder_dataset, imaging

CROP_SCALE = (0.35, 1.0)  # augmentation: random crops keep this fraction of the image area
SKIPPED_IN_EVENTS = 100   # files listed in a skipped event; metrics.json lists all
SPACE_MARGIN = 64 << 20   # free space left over after the cache: the .npy header, other writers
PREFETCH_DEPTH = 3        # batches gathered ahead of the training step
DECODE_BLOCK = 64         # images per decoding task and per write into the cache, at most
DECODE_BLOCK_BYTES = 16 << 20  # and at most so many bytes of pixels (2048 px images: one at a time)


def available_cpus(cgroup_root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """The CPUs this process may use: its affinity mask, lowered by a cgroup CPU quota.

    os.cpu_count() counts the host's CPUs: a container started with `docker run --cpus 2` (or a
    Kubernetes CPU limit) on a 64-core host gets a cgroup quota of 2 CPUs, and 64 threads there
    only queue for their slices. Reads cgroup v2 cpu.max and v1 cpu.cfs_quota_us, along the
    process's cgroup path up to the root (a parent's limit binds too).
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quotas = list(_cgroup_cpu_quotas(cgroup_root, proc_cgroup))
    if quotas:
        count = min(count, math.ceil(min(quotas)))
    return max(1, count)


def _cgroup_cpu_quotas(cgroup_root, proc_cgroup):
    """Each CPU quota (in CPUs) that applies to this process, read from the cgroup files."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            mounts, reader = [cgroup_root], _cpu_max
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own hierarchy
            mounts = [os.path.join(cgroup_root, name) for name in (controllers, "cpu", "cpu,cpuacct")]
            reader = _cfs_quota
        else:
            continue
        parts = [part for part in path.split("/") if part]
        for mount in dict.fromkeys(mounts):
            # Inside a container the mount is the container's own cgroup, whatever the path says.
            for depth in range(len(parts), -1, -1):
                quota = reader(os.path.join(mount, *parts[:depth]))
                if quota is not None:
                    yield quota


def _cpu_max(folder):
    try:
        with open(os.path.join(folder, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _cfs_quota(folder):
    try:
        with open(os.path.join(folder, "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(folder, "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


class DecodedDataset:
    """The decoded dataset: uint8 images [N, S, S, 3] (memory-mapped, read-only), labels [N], split
    indices, and the lease that keeps its cache entry from being evicted while this run reads it."""

    def __init__(self, classes, paths, labels, images, train, val, test, skipped, spec, lease=None):
        self.classes, self.paths, self.labels, self.images = classes, paths, labels, images
        self.train, self.val, self.test = train, val, test
        self.skipped, self.spec, self.lease = skipped, spec, lease

    def sizes(self):
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def split_digest(self):
        """Identifies classes and split, so that a checkpoint resumes only on the very same ones."""
        parts = [[self.paths[i] for i in part] for part in (self.train, self.val, self.test)]
        return hashlib.sha256(json.dumps([self.classes, parts]).encode()).hexdigest()[:16]

    def close(self):
        """Let the cache evict this entry again (also done by the process's end)."""
        if self.lease:
            self.lease.close()


def decode(path, spec):
    """The uint8 pixels [H, W, 3] that imaging.preprocess_file normalizes."""
    return imaging.decode_pixels(path, spec)


class DecodeBlocks(torch.utils.data.Dataset):
    """Block k of the images, decoded and written: write(start, block) with block uint8
    [n, H, W, 3] (rows of unreadable images left zero); the item is the block's reasons, one per
    file that cannot be read, else None, or an OSError's (errno, text) when the write failed. A
    block is at most DECODE_BLOCK images and DECODE_BLOCK_BYTES of pixels."""

    def __init__(self, root, relpaths, write, spec, packed=None):
        self.root, self.relpaths, self.write, self.spec, self.packed = root, relpaths, write, spec, packed
        self.height, self.width = spec["size"]
        self.block = max(1, min(DECODE_BLOCK, DECODE_BLOCK_BYTES // (self.height * self.width * 3)))

    def __len__(self):
        return math.ceil(len(self.relpaths) / self.block)

    def __getitem__(self, number):
        start = number * self.block
        names = self.relpaths[start:start + self.block]
        block = np.zeros((len(names), self.height, self.width, 3), dtype=np.uint8)
        reasons = []
        for row, relpath in enumerate(names):
            try:
                block[row] = decode(self.packed.open(relpath) if self.packed else os.path.join(self.root, relpath),
                                    self.spec)
                reasons.append(None)
            except imaging.DECODE_ERRORS as exc:
                # PIL names the file as opened; the report names it relative to --data, like `path`.
                reasons.append(imaging.describe_decode_error(exc).replace(os.path.join(self.root, relpath), relpath))
        try:
            self.write(start, block)  # a full disk is a failure, not an unreadable image
        except OSError as exc:  # as it is, not as a DataLoader worker's traceback text
            return exc.errno, exc.strerror or str(exc)
        return reasons


def decode_all(root, relpaths, write, spec, workers, on_done, packed=None):
    """Decode every image and write it (DecodeBlocks), in `workers` processes (0: this one);
    return a reason per file that cannot be read, else None. Memory stays at a few blocks per
    process, whatever the number of images.

    Why processes, not threads: a small image (a 3 KB JPEG) decodes in about 0.1 ms, much of it
    Python holding the GIL, so two threads were no faster than one here, while two processes
    decode twice as many, as ImageFolder's DataLoader workers do. They are DataLoader workers too
    (forked, so they share this process's open files; they stop when it dies), and each writes
    its blocks itself, so no pixels pass between processes (no /dev/shm) and only the reasons
    come back, in order. They ignore SIGINT and SIGTERM (a cancel is this process's to handle:
    a worker killed by the signal a whole process group gets would end the run as a crash) and
    are shut down on the way out of here, killed if they do not stop.
    packed: a packed_dataset.PackedDataset whose shards hold the files (else they lie under root).
    """
    loader = torch.utils.data.DataLoader(
        DecodeBlocks(root, relpaths, write, spec, packed), batch_size=None, num_workers=workers,
        multiprocessing_context="fork" if workers else None, worker_init_fn=_ignore_stop_signals if workers else None)
    reasons = []
    blocks = iter(loader)
    try:
        for block_reasons in blocks:
            if isinstance(block_reasons, tuple):
                raise OSError(*block_reasons)
            reasons += block_reasons
            on_done(len(reasons))
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        # torch's "DataLoader worker (pid(s) N) exited unexpectedly" and its traceback, in one line
        raise RuntimeError(f"a decoding process died ({str(exc).splitlines()[0]}): out of memory? try fewer "
                           "--workers") from None
    finally:
        _stop_workers(blocks)
    return reasons


def _ignore_stop_signals(worker_id):
    """A decoding process: SIGINT and SIGTERM are its parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _stop_workers(blocks):
    """Shut the DataLoader's workers down now, not when the traceback that holds the iterator is
    gone (a cancel raises inside its __next__): they hold copies of this process's open files,
    the cache entry's locks among them, which would keep a canceled entry from being removed.
    torch's shutdown asks each worker to stop and waits a few seconds; one still busy then (a
    read hung on a network mount) is killed, since it ignores torch's SIGTERM."""
    shutdown = getattr(blocks, "_shutdown_workers", None)  # multiprocessing iterators only
    if shutdown is None:
        return
    shutdown()
    for worker in getattr(blocks, "_workers", ()):
        if worker.is_alive():
            worker.kill()
            worker.join()


def check_free_space(cache_dir, nbytes):
    """Raise DatasetError unless `cache_dir` has room for a cache of `nbytes`.

    The cache file is created sparse: a disk that fills up while decoding would fail the run
    after most of the work, so the space is checked before the first image.
    """
    free = shutil.disk_usage(cache_dir).free
    if free < nbytes + SPACE_MARGIN:
        raise folder_dataset.DatasetError(
            f"the decoded-image cache needs {_size(nbytes + SPACE_MARGIN)} of free space in {cache_dir}, "
            f"which has {_size(free)}; point --cache-dir at a larger disk (or lower --image-size)")


def _size(nbytes):
    return f"{nbytes / (1 << 30):.1f} GiB" if nbytes >= 1 << 30 else f"{nbytes / (1 << 20):.0f} MiB"


def cache_root(args):
    """The folder of the persistent decoded-image cache: --cache-dir, else the user's cache folder."""
    return args.cache_dir or cache_store.default_root()


def load_data(args, scan, dist, report):
    """Decode the scanned images once (or find them in the cache), report unreadable ones, split.

    Rows, paths and labels are in sorted relative-path order, the cache entry's order. Local rank
    0 of each machine fills the entry; the other processes there map the same file after the
    barrier. Raises DatasetError.
    """
    cache_dir = cache_root(args)
    samples = sorted(scan.samples)
    relpaths = [path for path, _ in samples]
    labels = np.array([label for _, label in samples], dtype=np.int64)
    spec = imaging.preprocess_spec(args.image_size)
    size = args.image_size
    packed = getattr(scan, "packed", None)  # a packed_dataset.PackedDataset's scan carries it
    workers = available_cpus() if args.workers is None else args.workers
    report.log(f"found {len(relpaths)} images in {len(scan.classes)} classes under {args.data}")

    if dist.local_rank == 0:
        lease, metadata = fill_entry(args, relpaths, spec, cache_dir, workers, report, packed)
    dist.barrier()
    if dist.local_rank != 0:
        digests = content_digests(packed, cache_dir, args.data, relpaths, workers)
        lease = cache_store.Lease.acquire(cache_dir, cache_store.entry_key(spec, relpaths, digests))
        metadata = lease.metadata()
        if metadata is None:
            raise RuntimeError(f"local rank 0 did not complete the image cache entry {lease.folder} "
                               "(did the data change while the job started?)")
    images = np.load(lease.path(cache_store.IMAGES), mmap_mode="r")
    if images.shape != (len(relpaths), size, size, 3):
        raise RuntimeError(f"the image cache entry {lease.folder} holds {images.shape}, not "
                           f"{(len(relpaths), size, size, 3)}; remove it (orchestrate cache clear {lease.key})")

    unreadable = {int(i): reason for i, reason in metadata["unreadable"].items()}
    skipped = [{"path": relpaths[i], "reason": unreadable[i]} for i in sorted(unreadable)]
    if skipped:
        report.log(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]['path']}: "
                   f"{skipped[0]['reason']}")
        report.event("skipped", files=skipped[:SKIPPED_IN_EVENTS], count=len(skipped))

    usable = [(relpaths[i], int(labels[i])) for i in range(len(relpaths)) if i not in unreadable]
    train, val, test = folder_dataset.stratified_split(
        usable, scan.classes, args.val_fraction, args.test_fraction, args.seed)
    index = {path: i for i, path in enumerate(relpaths)}

    def indices(part):
        return np.array([index[path] for path, _ in part], dtype=np.int64)

    return DecodedDataset(scan.classes, relpaths, labels, images, indices(train), indices(val), indices(test),
                          scan.skipped + skipped, spec, lease)  # the links the scan left out too


def content_digests(packed, cache_dir, data, relpaths, workers, on_done=None):
    """The content sha256 of each file: a packed dataset's index has them, loose files are hashed."""
    if packed:
        return packed.digests(relpaths)
    return cache_store.content_digests(cache_dir, data, relpaths, workers, on_done)


def fill_entry(args, relpaths, spec, cache_dir, workers, report, packed=None):
    """(lease, metadata) of the cache entry of these files, decoded here unless a complete one
    exists; least-recently-used entries are evicted down to --cache-size-gb first.
    packed: the PackedDataset the files come from (None: loose files under --data)."""
    digests = content_digests(packed, cache_dir, args.data, relpaths, workers,
                              report.throttle("scan", len(relpaths), step="hash").update)
    lease = cache_store.Lease.acquire(cache_dir, cache_store.entry_key(spec, relpaths, digests))
    try:
        metadata = lease.metadata()
        if metadata is None:
            with lease.decoding(lambda: report.log(f"waiting for another job decoding the same images "
                                                   f"into {lease.folder}")):
                metadata = lease.metadata()  # that job may have completed it meanwhile
                if metadata is None:
                    return lease, decode_entry(args, relpaths, spec, cache_dir, lease, workers, report, packed)
        report.log(f"decoded images found in the cache: {lease.folder}")
        evict(args, cache_dir, 0, report)
        return lease, metadata
    except BaseException:  # a failed decode (a full disk, SIGTERM) leaves no half-filled entry
        lease.close()
        if lease.metadata() is None:
            cache_store.remove_unused(cache_dir, lease.key)
        raise


def evict(args, cache_dir, needed, report):
    """Make room for `needed` bytes under --cache-size-gb; warn when entries in use keep it over."""
    cap = args.cache_size_gb * 1e9
    removed, total = cache_store.evict(cache_dir, cap, needed)
    if removed:
        report.log(f"evicted {len(removed)} least recently used image cache entr"
                   f"{'y' if len(removed) == 1 else 'ies'} from {cache_dir}")
    if total + needed > cap:
        report.warn(f"the image cache {cache_dir} holds {_size(total + needed)} with this run's entry, over "
                    f"--cache-size-gb {args.cache_size_gb:g}: what is left is in use by running jobs "
                    "(this one included)")


def decode_entry(args, relpaths, spec, cache_dir, lease, workers, report, packed=None):
    """Decode every image into the entry's images.npy, then mark it complete; its metadata.

    Rows are written with pwrite rather than through a writable memory map: a full disk is then
    an OSError instead of a SIGBUS, and the pages written do not count as this process's memory.
    A kill at any moment leaves no entry.json, so the next run decodes again.
    """
    size = args.image_size
    shape = (len(relpaths), size, size, 3)
    row_bytes = size * size * 3
    evict(args, cache_dir, len(relpaths) * row_bytes, report)
    check_free_space(cache_dir, len(relpaths) * row_bytes)
    processes = f"{workers} process(es)" if workers else "the main process"
    report.log(f"decoding {len(relpaths)} images at {size}x{size} in {processes} into {lease.folder}")
    with open(lease.path(cache_store.IMAGES), "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        offset = f.tell()
        f.truncate(offset + len(relpaths) * row_bytes)
        fd = f.fileno()

        def write(start, block):
            data = memoryview(np.ascontiguousarray(block)).cast("B")
            position = offset + start * row_bytes
            while data:
                written = os.pwrite(fd, data, position)
                data, position = data[written:], position + written

        throttle = report.throttle("scan", len(relpaths))
        reasons = decode_all(args.data, relpaths, write, spec, workers, throttle.update, packed)
        os.fsync(fd)  # the images reach the disk before entry.json says they are there
    metadata = {"format": cache_store.CACHE_FORMAT, "images": len(relpaths), "image_size": size,
                "spec": spec, "data": os.path.abspath(args.data),
                "unreadable": {str(i): reason for i, reason in enumerate(reasons) if reason is not None}}
    lease.complete(metadata)
    return metadata


class Batches:
    """Dataset indices -> normalized float batches on the device, as imaging.preprocess_file computes them."""

    def __init__(self, data, device, channels_last):
        self.data, self.device, self.channels_last = data, device, channels_last
        self.pinned = device.type == "cuda" and torch.cuda.is_available()
        self.scale = float(np.float32(data.spec["scale"]))
        self.mean = torch.tensor(data.spec["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(data.spec["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def gather(self, idx):
        """(uint8 images [B, S, S, 3], int64 labels [B]) on the host, in pinned memory for CUDA
        so that their copy to the device is asynchronous."""
        images = torch.empty((len(idx),) + self.data.images.shape[1:], dtype=torch.uint8, pin_memory=self.pinned)
        # mode="clip": with the default "raise", numpy gathers into a temporary and copies again
        np.take(self.data.images, idx, axis=0, out=images.numpy(), mode="clip")
        labels = torch.from_numpy(self.data.labels[idx])
        return images, labels.pin_memory() if self.pinned else labels

    def to_device(self, images, labels):
        """A gathered batch -> (float32 [B, 3, S, S] with values 0..255, labels), on the device.

        Planar (NCHW-contiguous) before the conversion to float, a pass over bytes: normalize's
        per-channel arithmetic then runs over contiguous planes, in half the time it takes over
        interleaved channels (0.44 against 0.88 ms for 64 images of 64 px here)."""
        pixels = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous().float()
        return pixels, labels.to(self.device, non_blocking=True)

    def pixels(self, idx):
        """float32 [B, 3, S, S] with values 0..255, on the device."""
        return self.to_device(*self.gather(idx))[0]

    def normalize(self, x):
        """(x * scale - mean) / std, in place: the float batch of pixels() is used once, and three
        passes over it without three new tensors take a seventh of the time (2.5 against 18 ms
        for 256 images of 64 px here), with the same arithmetic to the bit."""
        x = x.mul_(self.scale).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def images(self, idx):
        return self.normalize(self.pixels(idx))

    def labels(self, idx):
        return torch.from_numpy(self.data.labels[idx]).to(self.device, non_blocking=True)

    def prefetch(self, index_batches, depth=PREFETCH_DEPTH):
        """(idx, pixels, labels) for each batch of dataset indices, as pixels(idx) and labels(idx)
        give them, gathered from the memory map by a background thread up to `depth` batches ahead.

        The gather (page faults on the cache file, a copy into pinned memory) then overlaps the
        previous steps instead of stalling the device between them. Leaving the loop early (an
        exception, a break, SIGTERM) stops the thread.
        """
        ready = queue.Queue(maxsize=depth)
        stop = threading.Event()
        end = object()

        def put(item):
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                if self.pinned and self.device.index is not None:
                    # else pinning from this thread would open a CUDA context on GPU 0 in every process
                    torch.cuda.set_device(self.device.index)
                for idx in index_batches:
                    if not put((idx, self.gather(idx))):
                        return
                put(end)
            except BaseException as exc:  # handed to the consumer, which raises it
                put(exc)

        thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                idx, gathered = item
                yield (idx, *self.to_device(*gathered))
        finally:
            stop.set()
            thread.join()


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
