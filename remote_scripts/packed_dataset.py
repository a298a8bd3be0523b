"""Packed datasets: a labeled image set as a few tar shards plus one JSON index, read by the job.

Why: tens of thousands of small files are slow to upload, list and read one by one (a blob
request, a blobfuse open each). `orchestrate data pack` (orchestrator/dataset/pack.py) writes
them as shards this module reads; both sides take the layout from here, so they cannot drift.

Layout of a packed dataset folder (also the layout of its blob prefix):

    index.json               written last: its presence means a complete dataset
    shards/<sha256>.tar      plain ustar archives named by the sha256 of their own bytes

Shards follow the WebDataset convention of one member per sample, named `<sha256><ext>` (the
content's digest and the original extension in lower case); identical images are stored once.
Members are sorted by name, with mtime 0, uid/gid 0, no user names and mode 0644, so the same
images always give byte-identical shards. The index (keys sorted, no timestamps) holds:

    format, version           FORMAT, VERSION
    classes                   sorted label names
    files                     [{path, label, sha256, shard, offset, size}] sorted by path: the
                              original relative path and label, the stored content's digest, the
                              shard file name, and where the member's bytes lie in it
    shards                    [{name, sha256, size, count, members}] (members: digest of the
                              sorted member names, which identifies a shard before it is written)
    labels, max_side, shard_bytes   how it was packed
    encoder                   with max_side: the Pillow (and codec) versions that re-encoded the
                              downscaled images, whose bytes depend on them (None without)

parse_index checks all of it (shard names, rows naming listed shards within their size, labels
among the classes, digests), so a damaged or hostile index is a DatasetError, not a traceback
or a path outside the dataset; PackedDataset then checks each shard's real size against the
index, so that no read goes past a shard's end (a member claimed 64 GiB long would otherwise be
a 64 GiB read).

The job takes labels and paths from the index and the content digests that key its decoded-image
cache too, so it hashes nothing, and a packed and a loose copy of the same images share a cache
entry (same relative paths, same digests). Images are read with pread at their offsets.
"""
import io
import json
from json.encoder import encode_basestring_ascii as _quote
import os
import re
import stat
import threading

from .folder_dataset import DatasetError, Scan

FORMAT = "orchestrate.packed"
VERSION = 1
INDEX_NAME = "index.json"
SHARDS_DIR = "shards"
SHARD_SUFFIX = ".tar"
INDEX_START = f'{{"format":"{FORMAT}",'.encode()
SHARD_NAME = re.compile(r"[0-9a-f]{64}\.tar")  # fullmatch: a shard's file name, never a path
DIGEST = re.compile(r"[0-9a-f]{64}")


def index_path(root):
    return os.path.join(root, INDEX_NAME)


def is_packed(root):
    """True when `root` holds a packed dataset: an index.json that begins as index_bytes writes
    it, or any index.json beside a shards/ folder of shard files (an index rewritten by another
    tool, e.g. pretty-printed, or damaged: read_index then reads it or says what is wrong, where
    the folder would otherwise be scanned as images and found to hold none). A loose folder may
    have an index.json of its own, which counts only with such shards beside it."""
    path = index_path(root)
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            if f.read(len(INDEX_START)) == INDEX_START:
                return True
    except OSError:  # unreadable: read_index says so where the shards mark the folder as packed
        pass
    try:
        with os.scandir(os.path.join(root, SHARDS_DIR)) as entries:
            return any(SHARD_NAME.fullmatch(entry.name) for entry in entries)
    except OSError:
        return False


def read_index(root):
    """The index document of the packed dataset in `root`, checked (parse_index); DatasetError
    when it is not one."""
    path = index_path(root)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DatasetError(f"cannot read the dataset index {path}: {exc.strerror}") from None
    return parse_index(data, path)


def parse_index(data, where):
    """The index document in `data` (the bytes of an index.json), checked: the one parser of
    indexes, for the job, the packer and the blob side. DatasetError naming `where` when it is
    not an index of this version, or is damaged."""
    try:
        doc = json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError too
        raise DatasetError(f"the dataset index {where} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DatasetError(f"{where} is not an index of a packed dataset")
    if doc.get("version") != VERSION:
        raise DatasetError(f"{where} is a packed dataset of version {doc.get('version')!r}; this job reads "
                           f"version {VERSION} (pack it again with this version of orchestrate)")
    problem = _index_problem(doc)
    if problem:
        raise DatasetError(f"the dataset index {where} is damaged: {problem} (pack the dataset again)")
    return doc


def _count(value):
    return type(value) is int and value >= 0


def _index_problem(doc):
    """What is wrong with an index document, or None."""
    classes, shards, files = doc.get("classes"), doc.get("shards"), doc.get("files")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return "'classes' is not a list of names"
    if not isinstance(shards, list) or not isinstance(files, list):
        return "'shards' and 'files' must be lists"
    max_side = doc.get("max_side")
    if max_side is not None and not _count(max_side):
        return f"'max_side' is {max_side!r}"
    if not isinstance(doc.get("encoder"), (str, type(None))):
        return f"'encoder' is {doc['encoder']!r}"
    sizes = {}
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict):
            return f"shards[{i}] is not an object"
        name, digest = shard.get("name"), shard.get("sha256")
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name) or name in sizes:
            return f"shards[{i}] has the name {name!r} (expected a unique <sha256>{SHARD_SUFFIX})"
        if not isinstance(digest, str) or name != digest + SHARD_SUFFIX:
            return f"shards[{i}] ({name}) has the sha256 {digest!r}, not its name's"
        if not _count(shard.get("size")) or not _count(shard.get("count")):
            return f"shards[{i}] ({name}) lacks a size or count"
        if not isinstance(shard.get("members"), str) or not DIGEST.fullmatch(shard["members"]):
            return f"shards[{i}] ({name}) lacks its members digest"
        sizes[name] = shard["size"]
    labels, paths, digest_ok = set(classes), set(), DIGEST.fullmatch
    for i, row in enumerate(files):
        if not isinstance(row, dict):
            return f"files[{i}] is not an object"
        path, digest, shard, offset, size = (row.get(k) for k in ("path", "sha256", "shard", "offset", "size"))
        if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/") or path in paths:
            return f"files[{i}] has the path {path!r} (expected a unique relative path)"
        paths.add(path)
        label = row.get("label")
        if not isinstance(label, str) or label not in labels:
            return f"files[{i}] ({path}) has the label {label!r}, which is not among the classes"
        if not isinstance(digest, str) or not digest_ok(digest):
            return f"files[{i}] ({path}) has the sha256 {digest!r}"
        source = row.get("source_sha256", digest)
        if not isinstance(source, str) or not digest_ok(source):
            return f"files[{i}] ({path}) has the source_sha256 {source!r}"
        if not isinstance(shard, str) or shard not in sizes:
            return f"files[{i}] ({path}) names the shard {shard!r}, which the shards list lacks"
        if not _count(offset) or not _count(size) or offset + size > sizes[shard]:
            return f"files[{i}] ({path}) lies outside its shard (offset {offset!r}, size {size!r})"
    return None


def index_bytes(doc):
    """The canonical bytes of an index document: the format first (is_packed reads it), then the
    other keys sorted, compact, one file per line."""
    head = {key: value for key, value in doc.items() if key not in ("format", "files")}
    files = ",\n".join(map(_file_row, doc["files"]))
    text = json.dumps(head, sort_keys=True, separators=(",", ":"))
    return INDEX_START + (text[1:-1] + ',"files":[\n' + files + "\n]}\n").encode()


ROW_KEYS = {"label", "offset", "path", "sha256", "shard", "size"}


def _file_row(entry):
    """json.dumps(entry, sort_keys=True, separators=(",", ":")), written out for the usual keys:
    5x faster, which an unchanged re-upload of 27,000 files notices."""
    if entry.keys() != ROW_KEYS:
        return json.dumps(entry, sort_keys=True, separators=(",", ":"))
    return '{"label":%s,"offset":%d,"path":%s,"sha256":%s,"shard":%s,"size":%d}' % (
        _quote(entry["label"]), entry["offset"], _quote(entry["path"]), _quote(entry["sha256"]),
        _quote(entry["shard"]), entry["size"])


class MemberFile(io.BytesIO):
    """One image's bytes; repr'd as the path a loose copy has, so that PIL's messages for an
    unreadable image read (and are reported) exactly as they are for the loose file."""

    def __init__(self, data, shown_as):
        super().__init__(data)
        self.shown_as = shown_as

    def __repr__(self):
        return repr(self.shown_as)


class PackedDataset:
    """A packed dataset opened for reading: its scan, content digests and image bytes."""

    def __init__(self, root):
        self.root = root
        self.doc = read_index(root)
        self.classes = list(self.doc["classes"])
        self.by_path = {entry["path"]: entry for entry in self.doc["files"]}
        self._fds = {}
        self._opening = threading.Lock()
        missing, resized = [], []
        for shard in self.doc["shards"]:
            try:
                found = os.stat(os.path.join(root, SHARDS_DIR, shard["name"]))
            except OSError:
                found = None
            if found is None or not stat.S_ISREG(found.st_mode):
                missing.append(shard["name"])
            elif found.st_size != shard["size"]:
                resized.append((shard["name"], found.st_size, shard["size"]))
        if missing:
            raise DatasetError(f"the packed dataset {root} lacks {len(missing)} shard(s) its index names, "
                               f"e.g. {SHARDS_DIR}/{missing[0]} (an incomplete copy? upload or download it again)")
        if resized:  # parse_index keeps every member within its shard's declared size: this is the real one
            name, size, declared = resized[0]
            raise DatasetError(f"the packed dataset {root} has {len(resized)} shard(s) of another size than its "
                               f"index says, e.g. {SHARDS_DIR}/{name}: {size} bytes, not {declared} (damaged or "
                               "changed since it was packed; pack the dataset again)")

    def scan(self):
        """A folder_dataset.Scan of the index's files (labels as they were packed)."""
        number = {name: i for i, name in enumerate(self.classes)}
        samples = [(entry["path"], number[entry["label"]]) for entry in self.doc["files"]]
        found = Scan(self.classes, samples, [])
        found.packed = self
        return found

    def digests(self, relpaths):
        return [self.by_path[path]["sha256"] for path in relpaths]

    def open(self, relpath):
        """A file object with the image's bytes, read with one pread from its shard (thread-safe)."""
        entry = self.by_path[relpath]
        fd = self._fds.get(entry["shard"])
        if fd is None:
            with self._opening:
                if entry["shard"] not in self._fds:
                    self._fds[entry["shard"]] = os.open(os.path.join(self.root, SHARDS_DIR, entry["shard"]),
                                                        os.O_RDONLY)
                fd = self._fds[entry["shard"]]
        return MemberFile(os.pread(fd, entry["size"], entry["offset"]), os.path.join(self.root, relpath))

    def close(self):
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
