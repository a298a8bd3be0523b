"""The dataset manifest: right files, right digests, and a hash cache that is really used."""
import hashlib
import json
import os
import time

import pytest

from orchestrator.dataset.manifest import HashCache, build_manifest
from orchestrator.errors import UsageError


def make_tree(root, files):
    """files: {relative path: bytes}."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def age(root, seconds=3600):
    """Backdate every file so that its digest is cacheable (not 'racily clean')."""
    past = time.time() - seconds
    for path in root.rglob("*"):
        os.utime(path, (past, past))


FILES = {
    "cat/a.png": b"cat a" * 100,
    "cat/sub/b.JPG": os.urandom(70_000),  # bigger than nothing, nested, upper-case extension
    "dog/c.jpeg": b"",
    "dog/notes.txt": b"not an image",
    "dog/.hidden.png": b"hidden",
    ".git/x.png": b"hidden folder",
}


def test_manifest_lists_the_scanned_images_with_sha256_size_and_label(tmp_path):
    root = make_tree(tmp_path / "pets", FILES)
    manifest = build_manifest(root)
    assert manifest.name == "pets"
    assert manifest.classes == ["cat", "dog"]
    assert [(e.path, e.label) for e in manifest.entries] == [
        ("cat/a.png", "cat"), ("cat/sub/b.JPG", "cat"), ("dog/c.jpeg", "dog")]
    for entry in manifest.entries:
        data = FILES[entry.path]
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.size == len(data)
    assert manifest.total_bytes == sum(len(FILES[e.path]) for e in manifest.entries)


def test_manifest_json_round_trips_and_is_deterministic(tmp_path):
    root = make_tree(tmp_path / "pets", FILES)
    first = build_manifest(root, "pets-v1", cache=False)
    text = first.to_json()
    assert build_manifest(root, "pets-v1", workers=1, cache=False).to_json() == text
    doc = json.loads(text)
    assert (doc["version"], doc["name"], doc["classes"]) == (1, "pets-v1", ["cat", "dog"])
    assert [f["path"] for f in doc["files"]] == [e.path for e in first.entries]
    assert json.loads(text)["files"][0] == {"path": "cat/a.png", "size": 500, "label": "cat",
                                            "sha256": hashlib.sha256(FILES["cat/a.png"]).hexdigest()}


def test_cache_keyed_by_path_size_mtime_skips_rehashing(tmp_path):
    root = make_tree(tmp_path / "pets", FILES)
    age(root)
    build_manifest(root)  # fills the cache in $XDG_STATE_HOME (set per test by conftest)
    assert (tmp_path / "state" / "orchestrate" / "hash-cache.sqlite3").exists()
    # Same size, same mtime, different bytes: only a cache hit can return the old digest.
    target = root / "cat" / "a.png"
    stat = target.stat()
    target.write_bytes(b"CAT A" * 100)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    cached = {e.path: e.sha256 for e in build_manifest(root).entries}
    assert cached["cat/a.png"] == hashlib.sha256(FILES["cat/a.png"]).hexdigest()
    # A new mtime is a new key: the file is hashed again.
    os.utime(target, (time.time() - 60, time.time() - 60))
    fresh = {e.path: e.sha256 for e in build_manifest(root).entries}
    assert fresh["cat/a.png"] == hashlib.sha256(b"CAT A" * 100).hexdigest()


def test_recently_modified_files_are_not_cached(tmp_path):
    root = make_tree(tmp_path / "pets", FILES)  # mtimes: now
    cache = HashCache(tmp_path / "cache.sqlite3")
    build_manifest(root, cache=cache)
    path = root / "cat" / "a.png"
    assert cache.get(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) is None


@pytest.mark.parametrize("files, message", [
    (None, "not found"),
    ({"only/a.png": b"x"}, "at least 2 classes"),
    ({"a/readme.txt": b"x", "b/x.csv": b"y"}, "no images found"),
])
def test_bad_datasets_are_user_errors(tmp_path, files, message):
    root = tmp_path / "data"
    if files:
        make_tree(root, files)
    with pytest.raises(UsageError, match=message):
        build_manifest(root)


def test_a_file_that_cannot_be_read_is_a_user_error_naming_it(tmp_path):
    """Running as root (as in CI) chmod cannot make a file unreadable: a dangling symlink fails at
    stat, and a socket (stat works, open() gives ENXIO) fails while hashing."""
    import socket

    root = make_tree(tmp_path / "d", {"cat/a.png": b"a", "dog/b.png": b"b"})
    (root / "cat" / "gone.png").symlink_to("nowhere.png")  # inside the folder: one leading out is left out
    with pytest.raises(UsageError, match=r"cannot read .*cat/gone\.png: No such file"):
        build_manifest(root, cache=False)
    (root / "cat" / "gone.png").unlink()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "dog" / "s.png"))
        with pytest.raises(UsageError, match=r"cannot read .*dog/s\.png: "):
            build_manifest(root, cache=False)
    finally:
        sock.close()
