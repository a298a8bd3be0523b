"""Scoring many images into a file: which images a command's paths name, one row per image, the write.

`orchestrate predict --out` and `orchestrate score` write the very same rows through the same
functions here, so a file made by one reads like a file made by the other. Folders are expanded
by the job's rules (remote_scripts.imaging.is_image_name: its extensions in any case, hidden files
and folders skipped), so `score DATA` sees the images a training run on DATA would see.

Why the file is written atomically and never replaced unasked: a predictions file is the result
of a long run that people feed to notebooks and other tools. Rows stream into a temporary file
beside it (memory does not grow with the image count) that is renamed over the target only once
every image has its row, so an interrupted run leaves the previous file intact and never half a
file; and an existing file is replaced only with --force, since one mistyped name could
otherwise destroy hours of scoring.
"""
import csv
import json
import os
import time
from pathlib import Path

from remote_scripts import imaging
from remote_scripts.atomic import write_atomically

from ..errors import UsageError
from . import BATCH_SIZE

COLUMNS = ("path", "label", "score", "top_k", "error")
FORMATS = (".csv", ".jsonl")


def check_out(out, force):
    """`out` as a Path, once it is known to be writable as asked; a UsageError otherwise.

    Checked before the model loads and any image is decoded, so a wrong name costs nothing.
    """
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"--out {out}: the file name must end in .csv or .jsonl (it chooses the format)")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; name a .csv or .jsonl file")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    if out.exists() and not force:
        raise UsageError(f"--out {out} exists; pass --force to replace it (it is replaced only once every image is scored)")
    return out


def list_images(arguments):
    """The image files the command's path arguments name, in order, each once.

    A file is taken as given, whatever its name: the user named it. A folder gives its images,
    recursively, sorted (each folder's files before its subfolders, as the job's scan lists
    them). A path that does not exist, or a folder without images, is a UsageError: a typo must
    not pass for an empty result.
    """
    found, seen = [], set()
    for argument in arguments:
        for image in images_of(argument):
            key = os.path.normpath(image)
            if key not in seen:
                seen.add(key)
                found.append(image)
    return found


def images_of(argument):
    """The image files one path argument names (list_images' rules), duplicates left in."""
    path = os.fspath(argument)
    if os.path.isdir(path):
        images = _folder_images(path)
        if not images:
            raise UsageError(f"no images in folder {path} (looked recursively for "
                            f"{', '.join(sorted(imaging.IMAGE_EXTENSIONS))}, in any case)")
        return images
    if os.path.exists(path):
        return [path]
    raise UsageError(f"no such file or folder: {path}")


def _folder_images(folder):
    images = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_unreadable_folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        images.extend(os.path.join(dirpath, f) for f in sorted(filenames) if imaging.is_image_name(f))
    return images


def _unreadable_folder(exc):
    """os.walk's error hook: a folder that cannot be listed is an error, not a folder without images."""
    raise UsageError(f"cannot read folder {exc.filename}: {exc.strerror}")


def prediction_rows(classifier, paths, top_k=1, batch_size=BATCH_SIZE, workers=None):
    """One row per path, in order: {path, label, score, top_k: [{label, score}], error}.

    A readable image has error None; an unreadable one has label, score and top_k None and the
    one-line reason in error. The rows of `predict --out` and of `score`.
    """
    k = min(top_k, len(classifier.labels))
    for path, (probs, error) in zip(paths, classifier.stream(paths, batch_size, workers)):
        if error:
            yield {"path": str(path), "label": None, "score": None, "top_k": None, "error": error}
        else:
            ranked = classifier.top_k(probs, k)
            yield {"path": str(path), "label": ranked[0]["label"], "score": ranked[0]["score"],
                   "top_k": ranked, "error": None}


def write_rows(out, rows):
    """Write `rows` to `out` (.csv or .jsonl, by its suffix), atomically; returns (rows, errors).

    CSV: a header row of COLUMNS; an empty cell for what a row lacks; top_k as a JSON list of
    {label, score}, so that any label (commas, quotes, colons) reads back unambiguously.
    JSONL: one JSON object per line with every column, null for what a row lacks.
    Scores are written in full (Python's shortest round-tripping float), not rounded.
    A file name that is not UTF-8 is written as its own bytes (surrogateescape), as the job's
    predictions.csv does, instead of failing the whole file.
    """
    counts = {"rows": 0, "errors": 0}

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            put = _csv_writer(f) if Path(out).suffix.lower() == ".csv" else _jsonl_writer(f)
            for row in rows:
                put(row)
                counts["rows"] += 1
                counts["errors"] += row["error"] is not None

    write_atomically(out, write)
    return counts["rows"], counts["errors"]


def _csv_writer(f):
    writer = csv.writer(f)
    writer.writerow(COLUMNS)

    def put(row):
        cells = dict(row, top_k=None if row["top_k"] is None else json.dumps(row["top_k"]))
        writer.writerow(["" if cells[c] is None else cells[c] for c in COLUMNS])
    return put


def _jsonl_writer(f):
    def put(row):
        f.write(json.dumps({c: row[c] for c in COLUMNS}) + "\n")
    return put


def score_to_file(classifier, paths, out, top_k=1, batch_size=BATCH_SIZE, workers=None, on_progress=None):
    """Score `paths` into `out` (write_rows); on_progress(done) after each row. Returns a summary:
    {images, scored, errors, seconds, images_per_second, out}; the rate counts every image from the
    first decode to the rename of the finished file, not the model's load."""
    started = time.perf_counter()

    def reported():
        for done, row in enumerate(prediction_rows(classifier, paths, top_k, batch_size, workers), 1):
            yield row
            if on_progress is not None:
                on_progress(done)

    images, errors = write_rows(out, reported())
    seconds = time.perf_counter() - started
    return {"images": images, "scored": images - errors, "errors": errors, "seconds": round(seconds, 3),
            "images_per_second": round(images / max(seconds, 1e-9), 2), "out": str(out)}
