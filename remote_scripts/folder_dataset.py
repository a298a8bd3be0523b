"""Labeled image datasets: scanning, validation, sampling and the stratified split.

Where the labels come from (`--labels`):
- folder (the default): DATA/<label>/**/<image>;
- filename: every image under DATA, labeled by the leading letters of its file name
  ("CD7001-220.jpg" -> "CD"), as ML.NET's LoadImagesFromDirectory(useFolderNameAsLabel: false);
- a .tsv or .csv file inside DATA: one `path<TAB or comma>label` row per image, paths relative to
  DATA, an optional header row (the TensorFlow-featurizer tutorial's tags.tsv).
Hidden files and folders and non-image files are ignored. A row or file that gives no usable
label is not fatal: it is listed, with its line number, in Scan.problems.
Links are followed only where they stay inside DATA: a file or folder link (a class folder too)
whose real path lies outside is left out and listed in Scan.skipped, so that a link such as
cat/x.png -> /etc/passwd is never packed, uploaded or trained on. The scan is where this is
decided because pack, upload and the job all take their files from it. A folder link inside DATA
is not walked below a label folder (the folder it names is walked already; one pointing up the
tree would loop).
Used by train.py in the job and by the client to reject bad data before starting a job.
"""
import csv
import io
import os
import random

from .image_names import is_image_name

FOLDER, FILENAME = "folder", "filename"
TABLE_EXTENSIONS = {".tsv": "\t", ".csv": ","}
LINK_OUTSIDE = "a link that leads outside the data folder (links are followed only inside it)"


class DatasetError(ValueError):
    """Bad data: the job exits 2 with this message, the client prints it in one line."""


class Scan:
    """What a scan found: sorted class names, (relative path, class index) samples, label folders
    without images, the files or rows that gave no usable label (one line each), and the links
    left out because they lead outside the data folder ({path, reason}, as the job lists the
    files it skips in metrics.json)."""

    def __init__(self, classes, samples, empty_classes, problems=(), skipped=()):
        self.classes = classes
        self.samples = samples
        self.empty_classes = empty_classes
        self.problems = list(problems)
        self.skipped = list(skipped)


def scan(root, min_classes=2, labels=FOLDER):
    """List the labeled images under `root`; raise DatasetError when they are unusable.

    labels: FOLDER, FILENAME or the path of a label table (relative to `root`, or absolute).
    Training needs two classes; evaluating on a holdout folder may use a single one.
    """
    if not os.path.exists(root):
        raise DatasetError(f"data folder not found: {root}")
    if not os.path.isdir(root):
        raise DatasetError(f"data path is not a folder: {root}")
    problems, empty, links = [], [], _Links(root)
    if labels == FOLDER:
        per_class, empty = _by_folder(root, links)
    elif labels == FILENAME:
        per_class = _by_file_name(_images_under(root, root, links), problems)
    else:
        path = labels if os.path.isabs(labels) else os.path.join(root, labels)
        per_class = _from_table(labels, path, lambda: _read_file(path),
                                lambda relative: os.path.isfile(os.path.join(root, relative)), problems)
        per_class = {label: [relative for relative in files if links.inside(relative)]
                     for label, files in per_class.items()}
    return _labeled(root, per_class, empty, problems, labels, min_classes, links.skipped)


def scan_listing(root, paths, read, min_classes=2, labels=FOLDER):
    """scan for the files of a listing rather than a folder: an object store's keys under a prefix.

    paths: the relative, '/'-separated names of the files under `root` (which only names the
    dataset in messages); read(path): the bytes of one of them (a label table). The rules are
    scan's (hidden names skipped, a label folder without images is not a class), and so are the
    samples, in the order a walk of the same tree gives.
    """
    problems, empty = [], []
    visible = sorted((path for path in paths if _visible_image(path)), key=_walk_order)
    if labels == FOLDER:
        per_class = {}
        for path in paths:
            folder = path.split("/", 1)[0]
            if "/" in path and not folder.startswith("."):
                per_class.setdefault(folder, [])
        for path in visible:
            if "/" in path:
                per_class[path.split("/", 1)[0]].append(path)
        empty = sorted(c for c in per_class if not per_class[c])
    elif labels == FILENAME:
        per_class = _by_file_name(visible, problems)
    else:
        if os.path.isabs(labels) or os.path.normpath(labels).split(os.sep)[0] == os.pardir:
            raise DatasetError(f"--labels {labels}: give the label table's path under {root}")
        table, listed = os.path.normpath(labels).replace(os.sep, "/"), set(paths)

        def read_table():
            if table not in listed:
                raise DatasetError(f"cannot read the label table {root}/{table}: no such object")
            return read(table)
        per_class = _from_table(labels, f"{root}/{table}", read_table, listed.__contains__, problems)
    return _labeled(root, per_class, empty, problems, labels, min_classes)


def _visible_image(path):
    """True for an image file none of whose folders is hidden (what a walk of scan keeps)."""
    *folders, name = path.split("/")
    return is_image_name(name) and not any(folder.startswith(".") for folder in folders)


def _walk_order(path):
    """Sorts paths as _images_under's top-down walk lists them: a folder's files by name, then
    its sub-folders by name."""
    *folders, name = path.split("/")
    return [(1, folder) for folder in folders] + [(0, name)]


def _labeled(root, per_class, empty, problems, labels, min_classes, skipped=()):
    """The Scan of {label: files}, or DatasetError when it has too few classes (naming the links
    left out, which may be why: a dataset made of links to images kept elsewhere)."""
    classes = sorted(c for c in per_class if per_class[c])
    left_out = (f"; {len(skipped)} link(s) leading outside it were left out, e.g. {skipped[0]['path']} "
                "(links are followed only inside the data folder: copy the files in, or give the folder "
                "they lie in)") if skipped else ""
    if not classes:
        where = {FOLDER: f"{root}/<label>/<image files>", FILENAME: f"image files under {root}"}.get(
            labels, f"rows of {labels} naming image files under {root}")
        raise DatasetError(f"no images found in {root} (expected {where})"
                           + (f"; first problem: {problems[0]}" if problems else "") + left_out)
    if len(classes) < min_classes:
        raise DatasetError(f"need at least 2 classes with images, found 1 ({classes[0]}) in {root}{left_out}")
    samples = [(path, i) for i, c in enumerate(classes) for path in per_class[c]]
    return Scan(classes, samples, empty, problems, skipped)


class _Links:
    """Which links of the data folder `root` stay inside it; the others, left out, in `skipped`.

    Only links are resolved (a directory entry says whether it is one for free) and a table's
    folders once each, so a tree without links costs no more than before: what lies under a
    folder the walk entered without a link, or through a link that stays inside, is inside.
    """

    def __init__(self, root):
        base = os.path.realpath(root)
        self.root, self.base = root, base
        self.below = base if base.endswith(os.sep) else base + os.sep
        self.skipped = []
        self._folders = {}  # a table's folder -> its real path

    def _within(self, real, relative):
        if real == self.base or real.startswith(self.below):
            return True
        self.skipped.append({"path": relative, "reason": LINK_OUTSIDE})
        return False

    def followed(self, path, relative):
        """True when the link at `path` (named `relative` under the data folder) stays inside it;
        else it is listed as skipped."""
        return self._within(os.path.realpath(path), relative)

    def inside(self, relative):
        """followed() for a file a label table names, any of whose folders may be a link too."""
        folder, name = os.path.split(relative)
        if folder not in self._folders:
            self._folders[folder] = os.path.realpath(os.path.join(self.root, folder))
        path = os.path.join(self._folders[folder], name)
        return self.followed(path, relative) if os.path.islink(path) else self._within(path, relative)


def _is_dir(entry):
    """A directory entry's is_dir() (following a link), False where it cannot be told, as os.walk."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _images_under(root, folder, links):
    """Image files under `folder`, relative to `root`, in a sorted top-down walk (each folder's
    files, then its sub-folders by name) that skips hidden entries and, through `links`, the
    links leading outside the data folder. A folder link is not walked (see the module's doc)."""
    found = []
    start = os.path.relpath(folder, root)
    pending = [(folder, "" if start == os.curdir else start + os.sep)]
    while pending:
        path, relative = pending.pop()
        try:
            with os.scandir(path) as listing:
                entries = sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as exc:  # a class folder that cannot be listed is an error, not an empty class
            raise DatasetError(f"cannot read folder {exc.filename or path}: {exc.strerror}") from None
        folders = []
        for entry in entries:
            if _is_dir(entry):
                if not entry.is_symlink():
                    folders.append((entry.path, relative + entry.name + os.sep))
                else:
                    links.followed(entry.path, relative + entry.name)  # listed when it leaves DATA
            elif is_image_name(entry.name) and (not entry.is_symlink() or
                                                links.followed(entry.path, relative + entry.name)):
                found.append(relative + entry.name)
        pending.extend(reversed(folders))
    return found


def _by_folder(root, links):
    """({label: files}, label folders without images) for DATA/<label>/**; a label folder that
    is a link leading outside the data folder is no class (listed in links.skipped)."""
    try:
        with os.scandir(root) as listing:
            class_dirs = sorted(e.name for e in listing if _is_dir(e) and not e.name.startswith(".")
                                and (not e.is_symlink() or links.followed(e.path, e.name)))
    except OSError as exc:
        raise DatasetError(f"cannot read data folder {root}: {exc.strerror}") from None
    per_class = {name: _images_under(root, os.path.join(root, name), links) for name in class_dirs}
    return per_class, [c for c in class_dirs if not per_class[c]]


def label_from_file_name(name):
    """The leading letters of a file name, ML.NET's label for useFolderNameAsLabel: false."""
    letters = 0
    while letters < len(name) and name[letters].isalpha():
        letters += 1
    return name[:letters]


def _by_file_name(paths, problems):
    per_class = {}
    for path in paths:
        label = label_from_file_name(os.path.basename(path))
        if label:
            per_class.setdefault(label, []).append(path)
        else:
            problems.append(f"{path}: the file name does not begin with a letter, so it gives no label")
    return per_class


def _read_file(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise DatasetError(f"cannot read the label table {path}: {exc.strerror}") from None


def _from_table(table, path, read, exists, problems):
    """{label: files} from the rows of a .tsv/.csv label table: read() gives its bytes (`path`
    names it in messages), exists(relative path) says whether a row's file is there; bad rows go
    to `problems`."""
    extension = os.path.splitext(table)[1].lower()
    if extension not in TABLE_EXTENSIONS:
        raise DatasetError(f"--labels takes {FOLDER}, {FILENAME} or a .tsv/.csv file, not {table!r}")
    name = os.path.basename(table)
    data = read()
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""),
                               delimiter=TABLE_EXTENSIONS[extension]))
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
        problem = _row_problem(cells, seen, exists)
        if problem:
            problems.append(f"{name} line {line}: {problem}")
            continue
        relative = os.path.normpath(cells[0])
        seen[relative] = line
        per_class.setdefault(cells[1], []).append(relative)
    return {label: sorted(files) for label, files in per_class.items()}


def _row_problem(cells, seen, exists):
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
    if not exists(relative):
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
