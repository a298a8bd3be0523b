"""The decoded-image cache on disk: its layout, keys, leases and eviction, for the job and the client.

Torch-free and numpy-free: the training job fills and reads entries (imagecache.py) and
`orchestrate cache list|clear` shows and removes them through this same module, so the two
cannot disagree about where an entry lives or when it is complete.

Why a persistent cache: decoding a photo collection is the slowest part of a first run, and a
resumed, repeated or tuned run on the same data needs exactly the same pixels. An entry is keyed
by the content of every file (sha256), the file list and the preprocessing spec (input size
included), so any run on the same bytes at the same size reuses it, wherever the data folder
sits, and a changed file gives a new entry instead of stale pixels.

Layout under the root (default $XDG_CACHE_HOME/orchestrate/images, see default_root):

    <key>/images.npy      uint8 [N, S, S, 3], one row per file in sorted relative-path order
    <key>/entry.json      written last, atomically: the entry is complete once it exists
    <key>/lease           flock: shared by every process using the entry, exclusive to remove it
    <key>/decoding        flock: exclusive while one process decodes the entry
    <key>/last-used       its mtime is the entry's last use (least-recently-used eviction)
    digests/<data>.json   per data folder: content sha256 of each file by (size, mtime_ns)
    .removing-<key>-<pid> an entry being deleted (renamed first, so no one opens it meanwhile)

Locks are flock(2) locks: the kernel drops them when their process dies, so a killed run never
pins an entry, and they hold across the pid namespaces of containers sharing the folder.
"""
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from .atomic import write_atomically

CACHE_FORMAT = 1
KEY_LENGTH = 32  # hex digits of sha256 naming an entry: 128 bits, no collisions in practice
IMAGES = "images.npy"
ENTRY = "entry.json"
LEASE = "lease"
DECODING = "decoding"
LAST_USED = "last-used"
DIGESTS = "digests"
REMOVING = ".removing-"
KEY_PATTERN = re.compile(f"^[0-9a-f]{{{KEY_LENGTH}}}$")
HASH_BLOCK = 1 << 20
# A file modified this recently may change again within the same mtime tick without its
# (size, mtime_ns) changing, so its digest is not remembered (git calls this "racily clean").
RACY_SECONDS = 2.0
WINDOW_PER_WORKER = 4  # map_bounded: tasks in flight per thread, enough to keep every thread busy


def default_root():
    """$XDG_CACHE_HOME/orchestrate/images, default ~/.cache/orchestrate/images: the user's cache
    directory, which desktop cleaners and backup tools know to treat as disposable."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "orchestrate", "images")


def map_bounded(function, items, workers):
    """function(item) for every item, results in order, on `workers` threads (0: this thread).

    Unlike Executor.map, at most workers * WINDOW_PER_WORKER tasks exist at any time, so memory
    does not grow with the number of items (one future per image of a million-image set is
    gigabytes). Closing the generator early cancels what is queued and waits for what runs.
    """
    if workers == 0:
        for item in items:
            yield function(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    pending = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= workers * WINDOW_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on SIGTERM, do not finish the queue first


# --------------------------------------------------------------------------------------------
# Keys: what an entry holds


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def content_digests(root, data, relpaths, workers, on_done=None):
    """The sha256 of each file data/relpath, in order; remembered under root/digests.

    Hashing reads every byte, which next to decoding is cheap but not free (a network mount
    reads each file again); a digest is reused while the file's size and mtime_ns are unchanged.
    A file that cannot be read gets the digest of its error, so it is decoded (and reported as
    unreadable) rather than failing here.
    """
    store = os.path.join(root, DIGESTS, hashlib.sha256(os.path.abspath(data).encode()).hexdigest()[:KEY_LENGTH] + ".json")
    try:
        with open(store) as f:
            known = json.load(f)["files"]
    except (OSError, ValueError, KeyError):
        known = {}
    started = time.time()

    def digest(relpath):
        path = os.path.join(data, relpath)
        try:
            stat = os.stat(path)
        except OSError as exc:
            return None, f"error:{type(exc).__name__}"
        remembered = known.get(relpath)
        if remembered and remembered[:2] == [stat.st_size, stat.st_mtime_ns]:
            return None, remembered[2]
        try:
            value = sha256_file(path)
        except OSError as exc:
            return None, f"error:{type(exc).__name__}"
        settled = stat.st_mtime < started - RACY_SECONDS
        return ([stat.st_size, stat.st_mtime_ns, value] if settled else None), value

    digests, learned = [], {}
    for relpath, (row, value) in zip(relpaths, map_bounded(digest, relpaths, workers)):
        digests.append(value)
        if row:
            learned[relpath] = row
        if on_done:
            on_done(len(digests))
    if learned:
        files = {relpath: known[relpath] for relpath in relpaths if relpath in known}
        files.update(learned)
        os.makedirs(os.path.dirname(store), exist_ok=True)
        write_atomically(store, json.dumps({"format": CACHE_FORMAT, "data": os.path.abspath(data),
                                            "files": files}))
    return digests


def entry_key(spec, relpaths, digests):
    """The entry's name: sha256 over the preprocessing spec (size included) and the sorted
    (relative path, content sha256) list, which is also the order of the entry's rows."""
    files = sorted(zip(relpaths, digests))
    text = json.dumps({"format": CACHE_FORMAT, "spec": spec, "files": files}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


# --------------------------------------------------------------------------------------------
# Leases: using, filling and removing an entry


def _same_file(handle, path):
    """True while `path` still names the file `handle` has open (not renamed away meanwhile)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


class Lease:
    """A process's shared hold on one entry: while any lease is held, nothing removes the entry.

    Obtained with Lease.acquire; kept for as long as the process reads the entry's images and
    released by close(), by garbage collection or by the process's end (a kill -9 included).
    """

    def __init__(self, folder, handle):
        self.folder, self.key, self._handle = folder, os.path.basename(folder), handle

    @classmethod
    def acquire(cls, root, key):
        """Create the entry's folder if needed and hold it; waits only while it is being removed."""
        folder = os.path.join(root, key)
        path = os.path.join(folder, LEASE)
        while True:
            os.makedirs(folder, exist_ok=True)
            try:
                handle = open(path, "a+b")
            except FileNotFoundError:  # renamed away between makedirs and open: start again
                continue
            fcntl.flock(handle, fcntl.LOCK_SH)
            if _same_file(handle, path):
                lease = cls(folder, handle)
                lease.record_use()
                return lease
            handle.close()  # removed while we waited for the lock: start again on a fresh folder

    def path(self, name):
        return os.path.join(self.folder, name)

    def metadata(self):
        """entry.json's content when the entry is complete, else None."""
        try:
            with open(self.path(ENTRY)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    @contextmanager
    def decoding(self, on_wait):
        """Hold the entry's decode lock; call on_wait() first if another process holds it (that
        process is decoding the same images: wait for it, then reuse its work)."""
        with open(self.path(DECODING), "a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def complete(self, metadata):
        """Mark the entry complete: entry.json, written atomically after every image."""
        write_atomically(self.path(ENTRY), json.dumps(metadata, sort_keys=True))
        self.record_use()

    def record_use(self):
        """Stamp the entry's last use with the exact time: the kernel's own file times tick
        coarsely (jiffies), and two uses within one tick would tie in the eviction order."""
        with open(self.path(LAST_USED), "a"):
            pass
        now = time.time_ns()
        os.utime(self.path(LAST_USED), ns=(now, now))

    def close(self):
        self._handle.close()


def remove_unused(root, key):
    """Delete entry `key` unless a process holds a lease on it; True when it is gone."""
    folder = os.path.join(root, key)
    path = os.path.join(folder, LEASE)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        if not os.path.isdir(folder):
            return True
        handle = open(path, "a+b")  # a folder without a lease file: make one to lock
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if not _same_file(handle, path):
            return False  # another process removed it and a new run recreated it meanwhile
        trash = os.path.join(root, f"{REMOVING}{key}-{os.getpid()}")
        os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)
    return True


# --------------------------------------------------------------------------------------------
# Listing, eviction, clearing


class EntryInfo:
    """What `orchestrate cache list` shows of one entry."""

    def __init__(self, key, folder, metadata, nbytes, last_used, in_use):
        self.key, self.folder, self.metadata = key, folder, metadata
        self.bytes, self.last_used, self.in_use = nbytes, last_used, in_use

    @property
    def complete(self):
        return self.metadata is not None

    def to_json(self):
        meta = self.metadata or {}
        return {"key": self.key, "path": self.folder, "complete": self.complete,
                "images": meta.get("images"), "image_size": meta.get("image_size"),
                "unreadable": len(meta.get("unreadable", {})), "data": meta.get("data"),
                "bytes": self.bytes, "last_used": self.last_used, "in_use": self.in_use}


def _in_use(folder):
    try:
        with open(os.path.join(folder, LEASE), "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def list_entries(root):
    """Every entry under `root`, least recently used first (the order of eviction)."""
    try:
        names = sorted(name for name in os.listdir(root) if KEY_PATTERN.match(name))
    except FileNotFoundError:
        return []
    entries = []
    for key in names:
        folder = os.path.join(root, key)
        try:
            files = [e for e in os.scandir(folder) if e.is_file()]
            nbytes = sum(e.stat().st_size for e in files)
            stamp = os.path.join(folder, LAST_USED)
            last_used = os.path.getmtime(stamp if os.path.exists(stamp) else folder)
            try:
                with open(os.path.join(folder, ENTRY)) as f:
                    metadata = json.load(f)
            except FileNotFoundError:
                metadata = None
        except FileNotFoundError:  # removed while we looked
            continue
        entries.append(EntryInfo(key, folder, metadata, nbytes, last_used, _in_use(folder)))
    entries.sort(key=lambda entry: entry.last_used)
    return entries


def evict(root, cap_bytes, needed=0):
    """Remove least-recently-used entries no process holds until the cache plus `needed` bytes
    fits in `cap_bytes`. Returns (keys removed, bytes the cache holds afterwards)."""
    _sweep_removals(root)
    entries = list_entries(root)
    total = sum(entry.bytes for entry in entries)
    removed = []
    for entry in entries:
        if total + needed <= cap_bytes:
            break
        if remove_unused(root, entry.key):
            removed.append(entry.key)
            total -= entry.bytes
    return removed, total


def clear(root, keys=None):
    """Remove the named entries (all when `keys` is None, with the remembered digests).
    Returns (keys removed, keys kept because a running job holds them)."""
    _sweep_removals(root)
    if keys is None:
        keys = [entry.key for entry in list_entries(root)]
        shutil.rmtree(os.path.join(root, DIGESTS), ignore_errors=True)
    removed, busy = [], []
    for key in keys:
        (removed if remove_unused(root, key) else busy).append(key)
    return removed, busy


def resolve_keys(root, prefixes):
    """Full keys for key prefixes (as `git` takes short hashes); ValueError naming a bad one."""
    keys = [entry.key for entry in list_entries(root)]
    found = []
    for prefix in prefixes:
        matches = [key for key in keys if key.startswith(prefix.lower())]
        if len(matches) != 1:
            raise ValueError(f"{'no' if not matches else 'more than one'} cache entry matches '{prefix}'")
        found.append(matches[0])
    return found


def _sweep_removals(root):
    """Finish deletions that a killed process left half done."""
    try:
        names = [name for name in os.listdir(root) if name.startswith(REMOVING)]
    except FileNotFoundError:
        return
    for name in names:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)

