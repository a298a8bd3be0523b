"""Labeled image datasets: scanning, validation, sampling and the stratified split.

Where the labels come from (`--labels`):
- folder (the default): DATA/<label>/**/<image>;
- filename: every image under DATA, labeled by the leading letters of its file name
  ("CD7001-220.jpg" -> "CD"), as ML.NET's LoadImagesFromDirectory(useFolderNameAsLabel: false);
- a .tsv or .csv file inside DATA: one `path<TAB or comma>label` row per image, paths relative to
  DATA, an optional header row (the TensorFlow-featurizer tutorial's tags.tsv).
Hidden files and folders and non-image files are ignored. A row or file that gives no usable
label is not fatal: it is listed, with its line number, in Scan.problems.
Used by train.py in the job and by the client to reject bad data before starting a job.
"""
import csv
import os
import random

try:  # imported as remote_scripts.folder_dataset by the client
    from .image_names import is_image_name
except ImportError:  # imported as a top-level module by train.py
    from image_names import is_image_name

FOLDER, FILENAME = "folder", "filename"
TABLE_EXTENSIONS = {".tsv": "\t", ".csv": ","}


class DatasetError(ValueError):
    """Bad data: the job exits 2 with this message, the client prints it in one line."""


class Scan:
    """What a scan found: sorted class names, (relative path, class index) samples, label folders
    without images, and the files or rows that gave no usable label (one line each)."""

    def __init__(self, classes, samples, empty_classes, problems=()):
        self.classes = classes
        self.samples = samples
        self.empty_classes = empty_classes
        self.problems = list(problems)


def scan(root, min_classes=2, labels=FOLDER):
    """List the labeled images under `root`; raise DatasetError when they are unusable.

    labels: FOLDER, FILENAME or the path of a label table (relative to `root`, or absolute).
    Training needs two classes; evaluating on a holdout folder may use a single one.
    """
    if not os.path.exists(root):
        raise DatasetError(f"data folder not found: {root}")
    if not os.path.isdir(root):
        raise DatasetError(f"data path is not a folder: {root}")
    problems, empty = [], []
    if labels == FOLDER:
        per_class, empty = _by_folder(root)
    elif labels == FILENAME:
        per_class = _by_file_name(root, problems)
    else:
        per_class = _from_table(root, labels, problems)
    classes = sorted(c for c in per_class if per_class[c])
    if not classes:
        where = {FOLDER: f"{root}/<label>/<image files>", FILENAME: f"image files under {root}"}.get(
            labels, f"rows of {labels} naming image files under {root}")
        raise DatasetError(f"no images found in {root} (expected {where})"
                           + (f"; first problem: {problems[0]}" if problems else ""))
    if len(classes) < min_classes:
        raise DatasetError(f"need at least 2 classes with images, found 1 ({classes[0]}) in {root}")
    samples = [(path, i) for i, c in enumerate(classes) for path in per_class[c]]
    return Scan(classes, samples, empty, problems)


def _images_under(root, folder):
    """Image files under `folder`, relative to `root`, in a sorted walk that skips hidden entries."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_unreadable_folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        relative = os.path.relpath(dirpath, root)  # once per folder: relpath per file is slow
        found.extend(os.path.join(relative, f) if relative != os.curdir else f
                     for f in sorted(filenames) if is_image_name(f))
    return found


def _by_folder(root):
    """({label: files}, label folders without images) for DATA/<label>/**."""
    try:
        class_dirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DatasetError(f"cannot read data folder {root}: {exc.strerror}") from None
    per_class = {name: _images_under(root, os.path.join(root, name)) for name in class_dirs}
    return per_class, [c for c in class_dirs if not per_class[c]]


def label_from_file_name(name):
    """The leading letters of a file name, ML.NET's label for useFolderNameAsLabel: false."""
    letters = 0
    while letters < len(name) and name[letters].isalpha():
        letters += 1
    return name[:letters]


def _by_file_name(root, problems):
    per_class = {}
    for path in _images_under(root, root):
        label = label_from_file_name(os.path.basename(path))
        if label:
            per_class.setdefault(label, []).append(path)
        else:
            problems.append(f"{path}: the file name does not begin with a letter, so it gives no label")
    return per_class


def _from_table(root, table, problems):
    """{label: files} from the rows of a .tsv/.csv label table; bad rows go to `problems`."""
    extension = os.path.splitext(table)[1].lower()
    if extension not in TABLE_EXTENSIONS:
        raise DatasetError(f"--labels takes {FOLDER}, {FILENAME} or a .tsv/.csv file, not {table!r}")
    path = table if os.path.isabs(table) else os.path.join(root, table)
    name = os.path.basename(table)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle, delimiter=TABLE_EXTENSIONS[extension]))
    except OSError as exc:
        raise DatasetError(f"cannot read the label table {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"the label table {path} is not UTF-8 text in {extension[1:]} form ({exc})") from None
    per_class, seen, first = {}, {}, True
    for line, row in enumerate(rows, 1):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        header, first = first and not is_image_name(cells[0]), False
        if header:  # a first row such as "path<TAB>label" names columns, not an image
            continue
        problem = _row_problem(root, cells, seen)
        if problem:
            problems.append(f"{name} line {line}: {problem}")
            continue
        relative = os.path.normpath(cells[0])
        seen[relative] = line
        per_class.setdefault(cells[1], []).append(relative)
    return {label: sorted(files) for label, files in per_class.items()}


def _row_problem(root, cells, seen):
    """Why a label table's row cannot be used, or None."""
    if len(cells) < 2 or not cells[1]:
        return f"no label for {cells[0]!r}" if cells[0] else "no path"
    relative = os.path.normpath(cells[0])
    if os.path.isabs(relative) or relative.split(os.sep)[0] == os.pardir:
        return f"{cells[0]} is not a path inside the data folder"
    if not is_image_name(relative):
        return f"{cells[0]} is not an image file name"
    if relative in seen:
        return f"{cells[0]} is listed again (first on line {seen[relative]})"
    if not os.path.isfile(os.path.join(root, relative)):
        return f"no such file {cells[0]}"
    return None


def label_source_for_job(root, labels):
    """`--labels` as the job receives it: folder and filename as they are, a table as its path
    relative to `root`. The job sees only the data folder (a container's mount, an Azure ML
    input), so the table must lie inside it. A missing `root` is left to scan to report."""
    if labels in (FOLDER, FILENAME) or not os.path.isdir(root):
        return labels
    resolved = os.path.realpath(labels if os.path.exists(labels) else os.path.join(root, labels))
    base = os.path.realpath(root)
    if not os.path.isfile(resolved):
        raise DatasetError(f"--labels: no such file {labels} (give {FOLDER}, {FILENAME} or a .tsv/.csv file "
                           "inside the data folder)")
    if os.path.commonpath([resolved, base]) != base:
        raise DatasetError(f"--labels: {labels} is outside the data folder {root}; put the label table inside it "
                           "(the job sees only the data folder)")
    return os.path.relpath(resolved, base)


def _unreadable_folder(exc):
    """os.walk's error hook: a class folder that cannot be listed is an error, not an empty class."""
    raise DatasetError(f"cannot read folder {exc.filename}: {exc.strerror}")


def sample_fraction(samples, fraction, seed, val_fraction, test_fraction):
    """A stratified, seeded `fraction` of each class's samples, for a quick try on a big set.

    Each class keeps round(n x fraction) of its images, but never fewer than its split needs,
    chosen by an RNG of its own (the split's stays untouched), in sorted order.
    """
    if fraction >= 1:
        return samples
    rng = random.Random(f"sample-fraction {seed}")
    need = minimum_per_class(val_fraction, test_fraction)
    by_label = {}
    for sample in sorted(samples):
        by_label.setdefault(sample[1], []).append(sample)
    kept = []
    for label in sorted(by_label):
        items = by_label[label]
        kept += rng.sample(items, min(len(items), max(need, round(len(items) * fraction))))
    return sorted(kept)


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
