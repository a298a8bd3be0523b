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
the previous pack with the same members is kept as it is, so re-packing an unchanged dataset
reads no image.
"""
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from remote_scripts import packed_dataset as layout
from remote_scripts.atomic import write_atomically
from remote_scripts.folder_dataset import FILENAME, FOLDER, DatasetError, scan

from ..errors import UserError
from ..paths import image_cache_dir
from .manifest import manifest_from_scan

DEFAULT_SHARD_MB = 64
MIN_SHARD_BYTES = 64 << 10
PROGRESS_EVERY = 256  # files between progress calls: a bar update per file costs more than its lookup
MEMBER_MODE = 0o644
TEMPORARY_PREFIX = ".partial-"
JPEG_QUALITY = 90  # a downscaled JPEG is re-encoded at this quality (Pillow's encoder is deterministic)


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


def default_pack_dir(data_dir):
    """Where `data upload` and `train --backend azure` pack a folder: the user's cache folder
    (everything there can be rebuilt), one per folder path, so a re-pack finds its shards."""
    path = Path(data_dir).resolve()
    return image_cache_dir().parent / "packed" / f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


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
                 cache=None, progress=None):
    """Pack the images of `data_dir` (labels: the job's --labels) into `out_dir`; a PackResult.

    max_side: downscale images whose longer side exceeds it (aspect kept; None: store the files
    as they are). cache: manifest.HashCache (None: the default one, False: none).
    progress: optional callable(phase, done, total) with phase "scan", "hash" or "pack".
    Shards of an earlier pack in `out_dir` that the new index does not name are removed after the
    index is written (the folder is one dataset). Raises UserError for unusable data.
    """
    if max_side is not None and max_side < 16:
        raise UserError(f"--max-side {max_side}: give at least 16 pixels (or leave it out to keep sizes)")
    if shard_bytes < MIN_SHARD_BYTES:
        raise UserError(f"--shard-size must be at least {MIN_SHARD_BYTES / (1 << 20):g} MB")
    report = progress or (lambda phase, done, total: None)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if out_dir.resolve() == data_dir.resolve() or data_dir.resolve() in out_dir.resolve().parents:
        raise UserError(f"--out {out_dir} is inside the data folder {data_dir}: the shards would be "
                        "scanned as data next time; choose a folder outside it")
    report("scan", 0, None)
    try:
        found = scan(str(data_dir), labels=labels)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    report("scan", len(found.samples), len(found.samples))
    warnings = [f"no usable label: {problem}" for problem in found.problems]
    warnings += [f"folder '{name}' has no images and is not a class" for name in found.empty_classes]
    hashed = [0]

    def on_hashed(entry):
        hashed[0] += 1
        if hashed[0] % PROGRESS_EVERY == 0 or hashed[0] == len(found.samples):
            report("hash", hashed[0], len(found.samples))

    manifest = manifest_from_scan(data_dir, found, labels=labels, cache=cache, progress=on_hashed)
    entries = [entry for entry in manifest.entries if entry.label]  # not the label table itself
    previous = _previous_index(out_dir)
    stored = _stored_contents(data_dir, entries, max_side, previous)
    warnings += _duplicate_warnings(entries)

    first = {}  # digest -> (member name, source path, stored size): one member per content
    for entry in entries:  # in path order: the first path of a content names its extension
        digest, size = stored[entry.path]
        first.setdefault(digest, (digest + _extension(entry.path), entry.path, size))
    members = {name: (source, size) for name, source, size in first.values()}
    unique = sorted(members)
    # errors="surrogateescape": a file name that is not UTF-8 is keyed by its own bytes
    keys = {name: hashlib.sha256(members[name][0].encode(errors="surrogateescape")).hexdigest() for name in unique}
    total = sum(members[name][1] for name in unique)
    buckets = bucket_count(total, shard_bytes)
    groups = _cut_buckets(unique, members, keys, buckets, shard_bytes)

    shards_dir = out_dir / layout.SHARDS_DIR
    shards_dir.mkdir(parents=True, exist_ok=True)
    kept = {shard["members"]: shard for shard in (previous or {}).get("shards", [])
            if (shards_dir / shard["name"]).is_file() and (shards_dir / shard["name"]).stat().st_size == shard["size"]}
    previous_offsets = _offsets_by_shard(previous)
    shard_docs, placement, written, packed = [], {}, 0, 0
    for group in groups:
        key = shard_key(group)
        if key in kept:
            shard, offsets = kept[key], previous_offsets[kept[key]["name"]]
        else:
            shard, offsets = _write_shard(shards_dir, group, members, data_dir, max_side)
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
    doc = {"format": layout.FORMAT, "version": layout.VERSION, "classes": manifest.classes,
           "labels": labels if labels in (FOLDER, FILENAME) else Path(labels).as_posix(),
           "max_side": max_side, "shard_bytes": shard_bytes,
           "shards": sorted(shard_docs, key=lambda s: s["name"]), "files": files}
    index = layout.index_bytes(doc)
    if previous is None or (out_dir / layout.INDEX_NAME).read_bytes() != index:  # unchanged: nothing written
        write_atomically(out_dir / layout.INDEX_NAME, index)
    names = {shard["name"] for shard in shard_docs}
    for path in shards_dir.iterdir():
        if path.name not in names:
            path.unlink()
    return PackResult(out_dir=str(out_dir), files=len(files), unique=len(unique), shards=len(shard_docs),
                      shards_written=written, shards_kept=len(shard_docs) - written,
                      bytes=sum(s["size"] for s in shard_docs), warnings=warnings)


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


def _stored_contents(data_dir, entries, max_side, previous):
    """{path: (sha256, size) of the bytes stored for it}: the file's own, or its downscaled copy.

    A downscaled copy's digest is taken from the previous index when it was made from the same
    source at the same --max-side, so re-packing does not resize every image again.
    """
    if max_side is None:
        return {entry.path: (entry.sha256, entry.size) for entry in entries}
    known = {}
    if previous and previous.get("max_side") == max_side:
        known = {row.get("source_sha256", row["sha256"]): (row["sha256"], row["size"]) for row in previous["files"]}
    stored = {}
    for entry in entries:
        if entry.sha256 not in known:
            data = _content(data_dir / entry.path, max_side)
            known[entry.sha256] = (hashlib.sha256(data).hexdigest(), len(data))
        stored[entry.path] = known[entry.sha256]
    return stored


def _content(path, max_side):
    """The bytes stored for an image: the file's, or a copy whose longer side is `max_side`.

    An image that cannot be decoded is stored as it is: the job reports it as unreadable, as it
    does for a loose folder.
    """
    data = path.read_bytes()
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


def _write_shard(shards_dir, group, members, data_dir, max_side):
    """Write one shard (its members in name order, with fixed metadata) under its content's
    name; (its index entry without `members`, {member digest: data offset})."""
    partial = shards_dir / f"{TEMPORARY_PREFIX}{os.getpid()}"
    offsets = {}
    with open(partial, "wb") as handle:
        writer = _HashingWriter(handle)
        with tarfile.open(fileobj=writer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name in group:
                source, size = members[name]
                data = _content(data_dir / source, max_side)
                if len(data) != size or hashlib.sha256(data).hexdigest() != name[:64]:
                    raise UserError(f"{data_dir / source} changed while it was packed; run the command again")
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
