"""Packing a labeled image folder into content-addressed tar shards and an index.

The layout (shards/<sha256>.tar plus index.json) and the index's reader are the job's, in
remote_scripts/packed_dataset.py; this module writes them. Why shards: an upload of 27,000 files
of 3 KB is 27,000 requests, a packed one a handful; the job then reads a few local files.

How images are assigned to shards, so that a small change rewrites few of them: each unique
image goes to bucket <first 64 bits of sha256(its relative path)> * B >> 64 (the path of its first
copy, in path order), where the bucket count B is the smallest power of two that keeps the average
bucket at half the shard size. B changes only when the dataset doubles or halves; an added,
changed or removed image changes its own bucket's shard only (keyed by path, not content, an
edited image stays in its bucket). A bucket that outgrows the shard size is cut into parts in
member order (a rare overflow, which then rewrites that bucket's parts after the change). A
shard is identified, before it is written, by the digest of its sorted member names: a shard of
the previous pack with the same members is kept as it is once its bytes hash to its name (a
sequential read of each shard), so re-packing an unchanged dataset reads no image, and a damaged
shard is written again.

The images come from a source (dataset/sources.py): a local folder, or an s3:// or az:// prefix
read object by object, whose pack lies in a local folder all the same.

The folder is one dataset: a pack refuses a non-empty folder that holds none, locks it against a
concurrent pack (fcntl), and removes from shards/ only shard files no index names and partial
files of packs that died, never other files.
"""
import hashlib
import io
import math
import os
import re
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from remote_scripts import packed_dataset as layout
from remote_scripts.atomic import write_atomically
from remote_scripts.folder_dataset import FILENAME, FOLDER, DatasetError

from .. import events
from ..errors import UsageError, dataset_errors
from ..paths import image_cache_dir
from .manifest import file_digest, hash_cache
from .sources import open_source

DEFAULT_SHARD_MB = 64
MIN_SHARD_BYTES = 64 << 10
# the transfer event's `what` of each phase of a pack
PHASES = {"scan": "scanning", "hash": "hashing", "pack": "packing"}
PROGRESS_EVERY = 256  # files between progress calls: a bar update per file costs more than its lookup
MEMBER_MODE = 0o644
TEMPORARY_PREFIX = ".partial-"
JPEG_QUALITY = 90  # a downscaled JPEG is re-encoded at this quality (Pillow's encoder is deterministic)
PARTIAL_FILE = re.compile(re.escape(TEMPORARY_PREFIX) + r"[0-9]+")  # fullmatch: a pack's file being written


@dataclass
class PackResult:
    """What a pack did: the folder, counts, shards written and kept, and its warnings."""

    out_dir: str
    files: int
    unique: int
    shards: int
    shards_written: int
    shards_kept: int
    bytes: int
    warnings: list = field(default_factory=list)

    def to_dict(self):
        return dict(self.__dict__)

    @classmethod
    def of_index(cls, out_dir, doc, shards_written=0, warnings=()):
        """The summary of the packed dataset `out_dir` whose index is `doc`."""
        return cls(out_dir=str(out_dir), files=len(doc["files"]), unique=sum(s["count"] for s in doc["shards"]),
                   shards=len(doc["shards"]), shards_written=shards_written,
                   shards_kept=len(doc["shards"]) - shards_written, bytes=sum(s["size"] for s in doc["shards"]),
                   warnings=list(warnings))


def packed_summary(out_dir):
    """The PackResult of a folder packed already (nothing written); UsageError when it is not one."""
    with dataset_errors():
        return PackResult.of_index(out_dir, layout.read_index(str(out_dir)))


def default_pack_dir(data_dir):
    """Where `data upload` and `train --backend azure` pack a folder: the user's cache folder
    (everything there can be rebuilt), one per folder path, so a re-pack finds its shards; one
    per URI for an s3:// or az:// source (the same from any working folder)."""
    source = open_source(data_dir)
    return image_cache_dir().parent / "packed" / f"{source.name}-{hashlib.sha256(source.key.encode()).hexdigest()[:8]}"


def bucket_count(total_bytes, shard_bytes):
    """The smallest power of two whose average bucket is at most half a shard."""
    count = 1
    while total_bytes / count > shard_bytes / 2:
        count *= 2
    return count


def bucket_of(key_hex, buckets):
    return (int(key_hex[:16], 16) * buckets) >> 64


def shard_key(member_names):
    """Identifies a shard's content before it is written: its sorted member names."""
    return hashlib.sha256("\n".join(member_names).encode()).hexdigest()


def pack_dataset(data_dir, out_dir, *, labels=FOLDER, max_side=None, shard_bytes=DEFAULT_SHARD_MB << 20,
                 cache=None, on_event=events.ignore):
    """Pack the images of `data_dir` (a folder or an s3:// or az:// URI; labels: the job's
    --labels) into the local folder `out_dir`; a PackResult.

    max_side: downscale images whose longer side exceeds it (aspect kept; None: store the files
    as they are). cache: manifest.HashCache (None: the default one, False: none).
    on_event: receives events.transfer(what, done, total, "files") with what "scanning",
    "hashing" or "packing" (PHASES) as each phase goes on.
    Shard files of an earlier pack in `out_dir` that the new index does not name are removed
    after the index is written (the folder is one dataset: a non-empty folder that holds no packed
    dataset is refused, and the folder is locked while packing). Raises UsageError for unusable data.
    """
    if max_side is not None and max_side < 16:
        raise UsageError(f"--max-side {max_side}: give at least 16 pixels (or leave it out to keep sizes)")
    if not shard_bytes >= MIN_SHARD_BYTES or math.isinf(shard_bytes):  # nan fails the first test
        raise UsageError(f"--shard-size must be a number of MB, at least {MIN_SHARD_BYTES / (1 << 20):g}")

    def report(phase, done, total):
        on_event(events.transfer(PHASES[phase], done, total, "files"))

    source, out_dir = open_source(data_dir), Path(out_dir)
    if source.contains(out_dir):
        raise UsageError(f"--out {out_dir} is inside the data folder {data_dir}: the shards would be "
                        "scanned as data next time; choose a folder outside it")
    _check_out_dir(out_dir)
    report("scan", 0, None)
    found = source.scan(labels)
    report("scan", len(found.samples), len(found.samples))
    warnings = [f"no usable label: {problem}" for problem in found.problems]
    warnings += [f"left out {link['path']}: {link['reason']}" for link in found.skipped]
    warnings += [f"folder '{name}' has no images and is not a class" for name in found.empty_classes]
    hashed = [0]

    def on_hashed(entry):
        hashed[0] += 1
        if hashed[0] % PROGRESS_EVERY == 0 or hashed[0] == len(found.samples):
            report("hash", hashed[0], len(found.samples))

    with hash_cache(cache) as digests, _locked(out_dir):
        manifest = source.manifest(found, labels, cache=digests or False, progress=on_hashed)
        entries = [entry for entry in manifest.entries if entry.label]  # not the label table itself
        warnings += _duplicate_warnings(entries)
        _check_out_dir(out_dir)  # again, now that no other pack can change it
        previous = _previous_index(out_dir)
        encoder = _encoder() if max_side is not None else None
        pack = (source, out_dir, entries, manifest.classes, labels, max_side, shard_bytes, encoder, previous, report,
                digests)
        try:
            doc, written = _pack(*pack)
        except _EncoderDrift:  # the recorded digests of downscaled copies are not what this encoder makes
            doc, written = _pack(*pack, reuse_digests=False)
        index = layout.index_bytes(doc)
        if previous is None or (out_dir / layout.INDEX_NAME).read_bytes() != index:  # unchanged: nothing written
            write_atomically(out_dir / layout.INDEX_NAME, index)
        names = {shard["name"] for shard in doc["shards"]}
        for path in (out_dir / layout.SHARDS_DIR).iterdir():
            # shard files no index names, and files of packs that died (the lock excludes a live one)
            ours = layout.SHARD_NAME.fullmatch(path.name) or PARTIAL_FILE.fullmatch(path.name)
            if ours and path.name not in names and not path.is_dir():
                path.unlink()
    return PackResult.of_index(out_dir, doc, shards_written=written, warnings=warnings)


class _EncoderDrift(Exception):
    """A downscaled copy re-encoded from an unchanged source has other bytes than the previous
    index recorded (a Pillow or codec upgrade): its digests cannot be reused."""


def _pack(source, out_dir, entries, classes, labels, max_side, shard_bytes, encoder, previous, report, digests,
          reuse_digests=True):
    """Write the shards the index needs; (index document, shards written)."""
    stored = _stored_contents(source, entries, max_side, encoder, previous if reuse_digests else None)
    first = {}  # digest -> (member name, source path, stored size, source digest): one member per content
    for entry in entries:  # in path order: the first path of a content names its extension
        digest, size = stored[entry.path]
        first.setdefault(digest, (digest + _extension(entry.path), entry.path, size, entry.sha256))
    members = {name: (source, size, source_digest) for name, source, size, source_digest in first.values()}
    unique = sorted(members)
    # errors="surrogateescape": a file name that is not UTF-8 is keyed by its own bytes
    keys = {name: hashlib.sha256(members[name][0].encode(errors="surrogateescape")).hexdigest() for name in unique}
    total = sum(members[name][1] for name in unique)
    buckets = bucket_count(total, shard_bytes)
    groups = _cut_buckets(unique, members, keys, buckets, shard_bytes)

    shards_dir = out_dir / layout.SHARDS_DIR
    shards_dir.mkdir(parents=True, exist_ok=True)
    previous_shards = {shard["members"]: shard for shard in (previous or {}).get("shards", [])}
    previous_offsets = _offsets_by_shard(previous)
    shard_docs, placement, written, packed = [], {}, 0, 0
    for group in groups:
        key = shard_key(group)
        kept = previous_shards.get(key)
        if kept and kept["name"] in previous_offsets and _intact(shards_dir / kept["name"], kept, digests):
            shard, offsets = kept, previous_offsets[kept["name"]]
        else:
            shard, offsets = _write_shard(shards_dir, group, members, source, max_side)
            shard["members"] = key
            written += 1
        shard_docs.append(shard)
        for name in group:
            placement[name[:64]] = (shard["name"], offsets[name[:64]])
        packed += len(group)
        report("pack", packed, len(unique))

    files = []
    for entry in entries:
        digest, size = stored[entry.path]
        shard_name, offset = placement[digest]
        row = {"path": entry.path, "label": entry.label, "sha256": digest, "shard": shard_name,
               "offset": offset, "size": size}
        if digest != entry.sha256:
            row["source_sha256"] = entry.sha256
        files.append(row)
    doc = {"format": layout.FORMAT, "version": layout.VERSION, "classes": classes,
           "labels": labels if labels in (FOLDER, FILENAME) else Path(labels).as_posix(),
           "max_side": max_side, "encoder": encoder, "shard_bytes": shard_bytes,
           "shards": sorted(shard_docs, key=lambda s: s["name"]), "files": files}
    return doc, written


def _intact(path, shard, digests):
    """True when the shard file of an earlier pack is there with the bytes its name says. Its
    digest goes through the hash cache like the images' (`digests`): an unchanged re-pack does
    not read every shard again, a shard written to since (same size or not) is hashed."""
    try:
        return path.stat().st_size == shard["size"] and file_digest(path, digests) == shard["sha256"]
    except OSError:
        return False


def _check_out_dir(out_dir):
    """Refuse an --out that is a file, or a non-empty folder that holds no packed dataset (an
    interrupted first pack, shards/ with shard and partial files only, is taken up again)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a folder for the packed dataset")
    if layout.is_packed(str(out_dir)):
        return
    shards_dir = out_dir / layout.SHARDS_DIR
    foreign = [path.name for path in out_dir.iterdir() if path.name != layout.SHARDS_DIR or not path.is_dir()]
    if not foreign and shards_dir.is_dir():
        foreign = [f"{layout.SHARDS_DIR}/{path.name}" for path in shards_dir.iterdir()
                   if not (layout.SHARD_NAME.fullmatch(path.name) or PARTIAL_FILE.fullmatch(path.name))]
    if foreign:
        raise UsageError(f"--out {out_dir} is not empty and holds no packed dataset (it has '{sorted(foreign)[0]}'); "
                        "choose a new or empty folder")


@contextmanager
def _locked(out_dir):
    """Hold an exclusive lock on the folder (flock on the folder itself, no lock file) while
    packing into it; UsageError when another pack holds it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not on this platform: no lock
        yield
        return
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another pack is writing to {out_dir}; wait for it to finish, then run this "
                            "again") from None
        yield
    finally:
        os.close(fd)


def _encoder():
    """What the bytes of a downscaled copy depend on: the Pillow version and its codecs'."""
    import PIL
    from PIL import features

    codecs = ", ".join(f"{name} {features.version(name)}" for name in ("jpg", "zlib", "webp", "libtiff")
                       if features.version(name))
    return f"Pillow {PIL.__version__} ({codecs})"


def _extension(path):
    return os.path.splitext(path)[1].lower()


def _previous_index(out_dir):
    try:
        return layout.read_index(str(out_dir))
    except DatasetError:
        return None


def _offsets_by_shard(index):
    """{shard name: {member digest: data offset}} of an earlier index (empty without one)."""
    offsets = {}
    for row in (index or {}).get("files", []):
        offsets.setdefault(row["shard"], {})[row["sha256"]] = row["offset"]
    return offsets


def _stored_contents(source, entries, max_side, encoder, previous):
    """{path: (sha256, size) of the bytes stored for it}: the file's own, or its downscaled copy.

    A downscaled copy's digest is taken from the previous index when it was made from the same
    source at the same --max-side by the same encoder, so re-packing does not resize every image
    again (a shard that must be written re-encodes it and checks the digest: _EncoderDrift).
    """
    if max_side is None:
        return {entry.path: (entry.sha256, entry.size) for entry in entries}
    known = {}
    if previous and previous.get("max_side") == max_side and previous.get("encoder") == encoder:
        known = {row.get("source_sha256", row["sha256"]): (row["sha256"], row["size"]) for row in previous["files"]}
    todo = {}  # source digest -> the path of its first copy: each content is read and resized once
    for entry in entries:
        if entry.sha256 not in known:
            todo.setdefault(entry.sha256, entry.path)
    for digest, data in zip(todo, source.read_many(todo.values())):
        data = _downscaled(data, max_side)
        known[digest] = (hashlib.sha256(data).hexdigest(), len(data))
    return {entry.path: known[entry.sha256] for entry in entries}


def _downscaled(data, max_side):
    """`data` (an image file's bytes) with its longer side at most `max_side` (None: as it is).

    An image that cannot be decoded is stored as it is: the job reports it as unreadable, as it
    does for a loose folder.
    """
    if max_side is None:
        return data
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) <= max_side:
                return data
            kind = image.format
            scale = max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image.draft(image.mode, size)
            smaller = image.resize(size, Image.LANCZOS)
            out = io.BytesIO()
            if kind == "JPEG":
                smaller.save(out, "JPEG", quality=JPEG_QUALITY)
            else:
                smaller.save(out, kind if kind in ("PNG", "WEBP", "BMP", "TIFF") else "PNG")
            return out.getvalue()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return data


def _duplicate_warnings(entries):
    """One warning per content found under more than one label (it would teach two answers)."""
    by_digest = {}
    for entry in entries:
        by_digest.setdefault(entry.sha256, []).append(entry)
    warnings = []
    for same in by_digest.values():
        labels = sorted({entry.label for entry in same})
        if len(labels) > 1:
            warnings.append(f"identical image under labels {', '.join(labels)}: "
                            f"{', '.join(entry.path for entry in same)}")
    return warnings


def _cut_buckets(unique, members, keys, buckets, shard_bytes):
    """Member names per shard: each bucket (by the member's key) in name order, cut where a shard
    would exceed the size."""
    by_bucket = {}
    for name in unique:
        by_bucket.setdefault(bucket_of(keys[name], buckets), []).append(name)
    groups = []
    for bucket in sorted(by_bucket):
        group, used = [], 0
        for name in by_bucket[bucket]:
            size = _member_bytes(members[name][1])
            if group and used + size > shard_bytes:
                groups.append(group)
                group, used = [], 0
            group.append(name)
            used += size
        groups.append(group)
    return groups


def _member_bytes(size):
    """A member's share of a tar file: a 512-byte header and its data padded to 512 bytes."""
    return tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


class _HashingWriter:
    """A write-only file that hashes what passes through it (tarfile writes sequentially)."""

    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def write(self, data):
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def tell(self):
        return self.size


def _write_shard(shards_dir, group, members, source, max_side):
    """Write one shard (its members in name order, with fixed metadata) under its content's
    name; (its index entry without `members`, {member digest: data offset})."""
    partial = shards_dir / f"{TEMPORARY_PREFIX}{os.getpid()}"
    offsets = {}
    with open(partial, "wb") as handle:
        writer = _HashingWriter(handle)
        with tarfile.open(fileobj=writer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            originals = source.read_many(members[name][0] for name in group)
            for name, original in zip(group, originals):
                path, size, source_digest = members[name]
                data = _downscaled(original, max_side)
                if len(data) != size or hashlib.sha256(data).hexdigest() != name[:64]:
                    if max_side is not None and data is not original and \
                            hashlib.sha256(original).hexdigest() == source_digest:
                        raise _EncoderDrift(path)
                    raise UsageError(f"{source.where(path)} changed while it was packed; run the command again")
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = size, 0, MEMBER_MODE
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.type = tarfile.REGTYPE
                offsets[name[:64]] = writer.size + len(info.tobuf(tar.format, tar.encoding, tar.errors))
                tar.addfile(info, io.BytesIO(data))
        handle.flush()
        os.fsync(handle.fileno())
    digest = writer.digest.hexdigest()
    name = digest + layout.SHARD_SUFFIX
    partial.replace(shards_dir / name)
    return {"name": name, "sha256": digest, "size": writer.size, "count": len(group)}, offsets
