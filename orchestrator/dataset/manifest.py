"""The dataset manifest: every image of a folder-per-label tree with its size, sha256 and label.

The manifest is what makes uploads incremental: a file whose sha256 is already recorded next to
its blob is never sent again. Which files count as images, and which folders as labels, is decided
by `remote_scripts.folder_dataset.scan`, the same code the training job runs, so the client
uploads exactly what train.py will read.

Hashing a large dataset takes a while (EuroSAT: 27,000 files), so files are hashed in a thread
pool (hashlib releases the GIL) and every digest is cached in the user's state dir, keyed by
(absolute path, size, mtime_ns): re-hashing an unchanged dataset only stats its files.
"""
import hashlib
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from remote_scripts.folder_dataset import FILENAME, FOLDER, scan

from ..errors import UsageError, dataset_errors
from ..paths import private_state_dir

MANIFEST_VERSION = 1
CHUNK = 1 << 20
# A file modified this recently may be modified again within the same mtime tick without its
# (size, mtime_ns) key changing, so its digest is not cached (git calls this "racily clean").
RACY_SECONDS = 2.0


@dataclass(frozen=True)
class Entry:
    """One image: its path relative to the dataset root (always with '/'), size, digest, label."""

    path: str
    size: int
    sha256: str
    label: str


@dataclass
class Manifest:
    """The images of one dataset, sorted by path; `to_json` is deterministic for equal content.
    `skipped`: the scan's links that lead outside the folder, left out ({path, reason}), for the
    upload to report; not part of the document."""

    name: str
    classes: list
    entries: list
    skipped: list = field(default_factory=list)

    @property
    def total_bytes(self):
        return sum(e.size for e in self.entries)

    def to_json(self):
        doc = {"version": MANIFEST_VERSION, "name": self.name, "classes": self.classes,
               "files": [asdict(e) for e in self.entries]}
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class HashCache:
    """sha256 digests keyed by (absolute path, size, mtime_ns), in a SQLite file; an object of an
    object store (dataset/sources.py) is keyed by (its URI, size, "etag <ETag>") in the same columns.

    Lookups and writes happen on the calling thread only (sqlite connections are not shared
    across threads); the pool only hashes.
    """

    def __init__(self, path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30)
        self._db.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER,"
                         " mtime_ns INTEGER, sha256 TEXT)")

    @classmethod
    def default(cls):
        return cls(private_state_dir() / "hash-cache.sqlite3")

    @staticmethod
    def _key(path):
        """The path as sqlite can store it: a file name that is not UTF-8 (surrogate escapes from
        os.walk) has its bytes written as \\xNN, every other path stays as it is."""
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

    def under(self, folder):
        """{path: (size, mtime_ns, sha256)} of every file cached under `folder`, in one query (a
        lookup per file costs more than the whole re-scan of an unchanged 27,000-file dataset)."""
        start = str(folder).rstrip("/") + "/"
        rows = self._db.execute("SELECT path, size, mtime_ns, sha256 FROM hashes WHERE path >= ? AND path < ?",
                                (start, start[:-1] + "0"))  # "0" sorts right after "/"
        return {path: (size, mtime_ns, digest) for path, size, mtime_ns, digest in rows}

    def get(self, path, size, mtime_ns):
        row = self._db.execute("SELECT sha256 FROM hashes WHERE path=? AND size=? AND mtime_ns=?",
                               (self._key(path), size, mtime_ns)).fetchone()
        return row[0] if row else None

    def put_many(self, rows):
        rows = [(self._key(path), *rest) for path, *rest in rows]
        try:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error:  # locked by another process for too long: the cache only saves time
            pass

    def close(self):
        self._db.close()


def build_manifest(root, name=None, *, labels=FOLDER, workers=8, cache=None, progress=None):
    """Scan `root` (labels: the job's --labels, relative to `root` for a table) and hash its
    images into a Manifest. A label table is an entry too (label ""): the job reads it from the
    uploaded folder.

    cache: a HashCache, None for the default one in the state dir, False for none.
    progress: optional callable(entry) called on this thread as each file is done.
    Raises DatasetError for a missing folder or one that gives no usable dataset.
    """
    with dataset_errors():
        found = scan(str(root), labels=labels)
    return manifest_from_scan(root, found, name, labels=labels, workers=workers, cache=cache, progress=progress)


@contextmanager
def hash_cache(cache=None):
    """The HashCache to use: `cache` itself, the default one for None (closed afterwards), or
    None for False and where the default cannot be opened (read-only home, locked file: then
    everything is hashed)."""
    if cache is not None:
        yield cache or None
        return
    try:
        own = HashCache.default()
    except (OSError, sqlite3.Error):
        yield None
        return
    try:
        yield own
    finally:
        own.close()


def file_digest(path, cache):
    """sha256 of one file, read only when `cache` (a HashCache or None) has no digest for its
    path, size and mtime_ns; a digest learned of a settled file is remembered."""
    path = os.path.abspath(path)
    st = os.stat(path)
    digest = cache.get(path, st.st_size, st.st_mtime_ns) if cache else None
    if digest is None:
        digest = sha256_file(path)
        if cache and st.st_mtime_ns < time.time_ns() - int(RACY_SECONDS * 1e9):
            cache.put_many([(path, st.st_size, st.st_mtime_ns, digest)])
    return digest


def scanned_files(found, labels):
    """(relative path, label) of each image a scan found, and the label table's own (label "")."""
    files = [(path, found.classes[label]) for path, label in found.samples]
    if labels not in (FOLDER, FILENAME):
        files.append((labels, ""))
    return files


def manifest_from_scan(root, found, name=None, *, labels=FOLDER, workers=8, cache=None, progress=None):
    """build_manifest for a scan already made (packing needs the scan's problems too)."""
    files = scanned_files(found, labels)
    root = Path(root).resolve()
    with hash_cache(cache) as opened:
        entries = _hash_entries(root, files, workers, opened, progress)
    return Manifest(name or root.name, list(found.classes), sorted(entries, key=lambda e: e.path), found.skipped)


def _hash_entries(root, files, workers, cache, progress):
    """Entries for (relative path, label) files: cached digests first, the rest hashed in a thread pool."""
    racy_after = time.time_ns() - int(RACY_SECONDS * 1e9)
    entries, todo = [], []  # todo: (entry without digest, absolute path, mtime_ns)
    known = cache.under(root) if cache else {}
    base = str(root)
    for relpath, label in files:
        full = os.path.join(base, relpath)
        try:
            st = os.stat(full)
        except OSError as exc:
            raise UsageError(f"cannot read {full}: {exc.strerror}") from None
        cached = known.get(full)
        digest = cached[2] if cached and cached[:2] == (st.st_size, st.st_mtime_ns) else None
        entry = Entry(relpath.replace(os.sep, "/"), st.st_size, digest or "", label)
        if digest:
            entries.append(entry)
            if progress:
                progress(entries[-1])
        else:
            todo.append((entry, str(full), st.st_mtime_ns))

    def hash_one(job):
        try:
            return sha256_file(job[1])
        except OSError as exc:
            raise UsageError(f"cannot read {job[1]}: {exc.strerror}") from None

    new_rows = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (entry, full, mtime_ns), digest in zip(todo, pool.map(hash_one, todo)):
            entries.append(replace(entry, sha256=digest))
            if mtime_ns < racy_after:
                new_rows.append((full, entry.size, mtime_ns, digest))
            if progress:
                progress(entries[-1])
    if cache and new_rows:
        cache.put_many(new_rows)
    return entries
