"""Folder-per-label datasets: scanning, validation and the stratified split.

Layout: DATA/<label>/**/<image>. Hidden files and folders and non-image files are ignored.
Used by train.py in the job and by the client to reject bad data before starting a job.
"""
import os
import random

try:  # imported as remote_scripts.folder_dataset by the client
    from .imaging import is_image_name
except ImportError:  # imported as a top-level module by train.py
    from imaging import is_image_name


class DatasetError(ValueError):
    """Bad data: the job exits 2 with this message, the client prints it in one line."""


class Scan:
    """What a scan found: sorted class names and (relative path, class index) samples."""

    def __init__(self, classes, samples, empty_classes):
        self.classes = classes
        self.samples = samples
        self.empty_classes = empty_classes


def scan(root, min_classes=2):
    """List the images of a folder-per-label tree; raise DatasetError when it is unusable.

    Training needs two classes; evaluating on a holdout folder may use a single one.
    """
    if not os.path.exists(root):
        raise DatasetError(f"data folder not found: {root}")
    if not os.path.isdir(root):
        raise DatasetError(f"data path is not a folder: {root}")
    try:
        class_dirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DatasetError(f"cannot read data folder {root}: {exc.strerror}") from None
    per_class = {}
    for name in class_dirs:
        files = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), onerror=_unreadable_folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files.extend(os.path.relpath(os.path.join(dirpath, f), root)
                         for f in sorted(filenames) if is_image_name(f))
        per_class[name] = files
    classes = [c for c in class_dirs if per_class[c]]
    empty = [c for c in class_dirs if not per_class[c]]
    if not classes:
        raise DatasetError(f"no images found in {root} (expected {root}/<label>/<image files>)")
    if len(classes) < min_classes:
        raise DatasetError(f"need at least 2 classes with images, found 1 ({classes[0]}) in {root}")
    samples = [(path, i) for i, c in enumerate(classes) for path in per_class[c]]
    return Scan(classes, samples, empty)


def _unreadable_folder(exc):
    """os.walk's error hook: a class folder that cannot be listed is an error, not an empty class."""
    raise DatasetError(f"cannot read folder {exc.filename}: {exc.strerror}")


def minimum_per_class(val_fraction, test_fraction):
    """Images a class needs so that each non-empty split gets at least one of them."""
    return 1 + (val_fraction > 0) + (test_fraction > 0)


def split_sizes(n, val_fraction, test_fraction):
    """(train, val, test) counts for a class of n images; each asked-for split gets >= 1."""
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    return n - n_val - n_test, n_val, n_test


def stratified_split(samples, classes, val_fraction, test_fraction, seed):
    """Split (path, label) samples per class into train/val/test lists, deterministically.

    Each class is sorted by path and shuffled with one RNG seeded by `seed`, so the same data
    and seed give the same split on any machine (which is what makes resuming safe).
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DatasetError("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    rng = random.Random(seed)
    need = minimum_per_class(val_fraction, test_fraction)
    by_label = [[] for _ in classes]
    for sample in samples:
        by_label[sample[1]].append(sample)
    train, val, test = [], [], []
    for label, name in enumerate(classes):
        items = sorted(by_label[label])
        if len(items) < need:
            raise DatasetError(
                f"class '{name}' has {len(items)} usable image(s); at least {need} are needed to "
                f"split it into train/validation/test (lower --val-fraction/--test-fraction or add images)")
        rng.shuffle(items)
        n_train, n_val, _ = split_sizes(len(items), val_fraction, test_fraction)
        if n_train < 1:
            raise DatasetError(f"class '{name}' has {len(items)} image(s): too few to keep any for training")
        train += items[:n_train]
        val += items[n_train:n_train + n_val]
        test += items[n_train + n_val:]
    return train, val, test
