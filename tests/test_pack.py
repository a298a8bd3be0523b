"""Packing (orchestrator/dataset/pack.py) and reading packed data in the job (remote_scripts/packed_dataset.py)."""
import hashlib
import json
import os
import shutil
import tarfile

import pytest

from orchestrator.dataset.pack import pack_dataset
from orchestrator.errors import UsageError
from remote_scripts import packed_dataset

SHARD = 64 << 10


def random_dataset(root, classes=("cat", "dog", "fox"), per_class=60, seed=0):
    """Files named .png holding distinct random bytes: packing never decodes them."""
    rng = __import__("random").Random(seed)
    for label in classes:
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            (root / label / f"{i:03d}.png").write_bytes(rng.randbytes(2000 + 37 * i))
    return root


def tree_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def shard_names(out):
    return {shard["name"] for shard in json.loads((out / "index.json").read_text())["shards"]}


def test_layout_index_and_members_are_as_documented(tmp_path):
    data = random_dataset(tmp_path / "pets", per_class=5)
    result = pack_dataset(data, tmp_path / "out", shard_bytes=SHARD)
    doc = packed_dataset.read_index(str(tmp_path / "out"))
    assert doc["classes"] == ["cat", "dog", "fox"] and result.files == len(doc["files"]) == 15
    assert [f["path"] for f in doc["files"]] == sorted(f["path"] for f in doc["files"])
    for shard in doc["shards"]:
        path = tmp_path / "out" / "shards" / shard["name"]
        assert shard["name"] == shard["sha256"] + ".tar" == hashlib.sha256(path.read_bytes()).hexdigest() + ".tar"
        with tarfile.open(path) as tar:
            members = tar.getmembers()
        assert [m.name for m in members] == sorted(m.name for m in members) and len(members) == shard["count"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    for row in doc["files"]:
        source = (data / row["path"]).read_bytes()
        blob = (tmp_path / "out" / "shards" / row["shard"]).read_bytes()[row["offset"]:row["offset"] + row["size"]]
        assert blob == source and row["sha256"] == hashlib.sha256(source).hexdigest()
    assert packed_dataset.is_packed(str(tmp_path / "out")) and not packed_dataset.is_packed(str(data))


def test_packing_is_deterministic_across_runs_and_places(tmp_path):
    data = random_dataset(tmp_path / "a" / "pets")
    pack_dataset(data, tmp_path / "one", shard_bytes=SHARD, cache=False)
    pack_dataset(data, tmp_path / "two", shard_bytes=SHARD, cache=False)
    copy = tmp_path / "b" / "elsewhere"
    shutil.copytree(data, copy)
    os.utime(copy / "cat" / "000.png", (1, 1))  # other file times: still the same bytes out
    pack_dataset(copy, tmp_path / "three", shard_bytes=SHARD, cache=False)
    first = tree_bytes(tmp_path / "one")
    assert len(shard_names(tmp_path / "one")) > 4
    assert first == tree_bytes(tmp_path / "two") == tree_bytes(tmp_path / "three")


def test_identical_images_are_stored_once_and_two_labels_warned_about(tmp_path):
    data = random_dataset(tmp_path / "pets", per_class=4)
    shutil.copy(data / "cat" / "001.png", data / "dog" / "same-as-cat.png")
    shutil.copy(data / "cat" / "002.png", data / "cat" / "again.png")
    result = pack_dataset(data, tmp_path / "out", shard_bytes=SHARD)
    assert (result.files, result.unique) == (14, 12)
    assert [w for w in result.warnings if "identical" in w] == [
        "identical image under labels cat, dog: cat/001.png, dog/same-as-cat.png"]
    rows = {f["path"]: f for f in json.loads((tmp_path / "out" / "index.json").read_text())["files"]}
    assert rows["dog/same-as-cat.png"]["label"] == "dog"
    assert (rows["dog/same-as-cat.png"]["shard"], rows["dog/same-as-cat.png"]["offset"]) == \
        (rows["cat/001.png"]["shard"], rows["cat/001.png"]["offset"])


@pytest.mark.parametrize("change", ["add", "modify", "remove"])
def test_a_small_change_rewrites_one_shard(tmp_path, change):
    data = random_dataset(tmp_path / "pets")
    out = tmp_path / "out"
    pack_dataset(data, out, shard_bytes=SHARD)
    before = shard_names(out)
    if change == "add":
        (data / "dog" / "new.png").write_bytes(os.urandom(3000))
    elif change == "modify":
        (data / "dog" / "010.png").write_bytes(os.urandom(2500))
    else:
        (data / "fox" / "020.png").unlink()
    result = pack_dataset(data, out, shard_bytes=SHARD)
    after = shard_names(out)
    assert len(before) > 8
    assert result.shards_written == 1 and len(after - before) == 1 and len(before - after) == 1
    assert {p.name for p in (out / "shards").iterdir()} == after  # shards of the old index are gone
    unchanged = pack_dataset(data, out, shard_bytes=SHARD)
    assert unchanged.shards_written == 0


def test_shards_stay_within_the_size(tmp_path):
    data = random_dataset(tmp_path / "pets", per_class=80)
    pack_dataset(data, tmp_path / "out", shard_bytes=SHARD)
    sizes = [s["size"] for s in json.loads((tmp_path / "out" / "index.json").read_text())["shards"]]
    assert max(sizes) <= SHARD + 10240  # plus the tar end-of-archive blocks


def test_max_side_downscales_keeping_the_aspect(tmp_path):
    from PIL import Image

    data = tmp_path / "pics"
    for label, size in (("wide", (400, 100)), ("small", (20, 30))):
        (data / label).mkdir(parents=True)
        Image.new("RGB", size, (200, 10, 10)).save(data / label / "a.jpg")
        Image.new("RGB", size, (10, 200, 10)).save(data / label / "b.png")
    pack_dataset(data, tmp_path / "out", max_side=64)
    dataset = packed_dataset.PackedDataset(str(tmp_path / "out"))
    sizes = {path: Image.open(dataset.open(path)).size for path in dataset.by_path}
    assert sizes == {"wide/a.jpg": (64, 16), "wide/b.png": (64, 16), "small/a.jpg": (20, 30), "small/b.png": (20, 30)}
    assert "source_sha256" in dataset.by_path["wide/a.jpg"] and "source_sha256" not in dataset.by_path["small/a.jpg"]
    first = tree_bytes(tmp_path / "out")
    pack_dataset(data, tmp_path / "again", max_side=64)
    assert tree_bytes(tmp_path / "again") == first


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="data folder not found"):
        pack_dataset(tmp_path / "missing", tmp_path / "out")
    data = random_dataset(tmp_path / "pets", per_class=2)
    with pytest.raises(UsageError, match="inside the data folder"):
        pack_dataset(data, data / "packed")
    with pytest.raises(UsageError, match="at least"):
        pack_dataset(data, tmp_path / "out", shard_bytes=1000)


def test_job_reads_a_packed_folder_with_the_loose_folders_split_and_cache_entry(tmp_path):
    import argparse

    from imagegen import make_dataset
    from remote_scripts import folder_dataset, imagecache
    from remote_scripts.runtime import Dist
    from test_image_cache import RecordingReport

    data = make_dataset(tmp_path / "colours", per_class=6, corrupt=2)
    pack_dataset(data, tmp_path / "packed")

    def args(folder):
        return argparse.Namespace(data=str(folder), cache_dir=str(tmp_path / "cache"), cache_size_gb=20.0, workers=2,
                                  image_size=16, val_fraction=0.2, test_fraction=0.2, seed=0)

    packed = imagecache.load_data(args(tmp_path / "packed"),
                                  packed_dataset.PackedDataset(str(tmp_path / "packed")).scan(), Dist(), RecordingReport())
    loose_report = RecordingReport()
    loose = imagecache.load_data(args(data), folder_dataset.scan(str(data)), Dist(), loose_report)
    assert packed.lease.key == loose.lease.key  # one cache entry for both copies
    assert packed.split_digest() == loose.split_digest() and packed.skipped == loose.skipped
    assert len(packed.skipped) == 2
    # decoded from the shards, the pixels equal a fresh decode of the loose files
    shutil.rmtree(tmp_path / "cache")
    fresh = imagecache.load_data(args(tmp_path / "packed"),
                                 packed_dataset.PackedDataset(str(tmp_path / "packed")).scan(), Dist(), RecordingReport())
    assert (fresh.images[:] == loose.images[:]).all() and fresh.skipped == loose.skipped


def test_train_script_on_a_packed_folder_gives_the_loose_folders_split_and_metrics(tmp_path):
    import subprocess
    import sys

    from imagegen import make_dataset
    from orchestrator.events import parse_line
    from remote_scripts import train

    data = make_dataset(tmp_path / "colours", per_class=8, corrupt=1, modes=True)
    pack_dataset(data, tmp_path / "packed")

    def run(folder, name):
        out = tmp_path / name
        result = subprocess.run(
            [sys.executable, train.__file__, "--data", str(folder), "--output", str(out), "--arch", "resnet18",
             "--weights", "none", "--image-size", "32", "--mode", "linear", "--epochs", "2", "--batch-size", "8",
             "--cache-dir", str(tmp_path / f"cache-{name}"), "--workers", "1"],
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        events = [e for e in map(parse_line, result.stdout.splitlines()) if e]
        start = next(e for e in events if e["type"] == "run_start")
        return start, json.loads((out / "metrics.json").read_text()), (out / "predictions.csv").read_text()

    packed_start, packed_metrics, packed_predictions = run(tmp_path / "packed", "packed")
    loose_start, loose_metrics, loose_predictions = run(data, "loose")
    assert packed_start["classes"] == loose_start["classes"]
    assert packed_start["split"] == loose_start["split"]
    assert packed_metrics == loose_metrics and len(packed_metrics["skipped"]) == 1
    assert packed_predictions == loose_predictions


# -- the folder --out: one dataset, refused when it is something else, locked while packing ----------

def test_a_non_empty_out_that_holds_no_packed_dataset_is_refused(tmp_path):
    data = random_dataset(tmp_path / "pets", per_class=3)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty and holds no packed dataset"):
        pack_dataset(data, tmp_path / "mine", shard_bytes=SHARD)
    (tmp_path / "other" / "shards").mkdir(parents=True)
    (tmp_path / "other" / "shards" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(UsageError, match="shards/photo.jpg"):
        pack_dataset(data, tmp_path / "other", shard_bytes=SHARD)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "index.json").write_text('{"not": "ours"}')
    with pytest.raises(UsageError, match="holds no packed dataset"):
        pack_dataset(data, tmp_path / "foreign", shard_bytes=SHARD)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        pack_dataset(data, tmp_path / "file", shard_bytes=SHARD)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine" and (tmp_path / "other" / "shards" / "photo.jpg").exists()
    # an interrupted first pack (shards and a partial file, no index yet) is taken up again
    (tmp_path / "interrupted" / "shards").mkdir(parents=True)
    (tmp_path / "interrupted" / "shards" / ".partial-12345").write_bytes(b"half")
    pack_dataset(data, tmp_path / "interrupted", shard_bytes=SHARD)
    assert {p.name for p in (tmp_path / "interrupted" / "shards").iterdir()} == shard_names(tmp_path / "interrupted")


def test_a_re_pack_removes_only_its_own_stale_files(tmp_path):
    data = random_dataset(tmp_path / "pets")
    out = tmp_path / "out"
    pack_dataset(data, out, shard_bytes=SHARD)
    old = shard_names(out)
    (out / "shards" / "README.txt").write_text("the user's")
    (out / "shards" / "sub").mkdir()
    (out / "shards" / "sub" / "x").write_text("x")
    (out / "shards" / ".partial-999999").write_bytes(b"of a pack that died")
    (out / "notes.txt").write_text("the user's too")
    (data / "dog" / "010.png").write_bytes(os.urandom(2500))
    result = pack_dataset(data, out, shard_bytes=SHARD)
    new = shard_names(out)
    assert result.shards_written == 1 and len(old - new) == 1
    assert {p.name for p in (out / "shards").iterdir()} == new | {"README.txt", "sub"}
    assert (out / "notes.txt").exists() and (out / "shards" / "sub" / "x").exists()


def test_a_pack_into_a_folder_another_pack_holds_is_refused(tmp_path):
    import fcntl

    data = random_dataset(tmp_path / "pets", per_class=3)
    out = tmp_path / "out"
    pack_dataset(data, out, shard_bytes=SHARD)
    before = tree_bytes(out)
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a concurrent pack holds it
        with pytest.raises(UsageError, match="another pack is writing to"):
            pack_dataset(data, out, shard_bytes=SHARD)
    finally:
        os.close(fd)
    assert tree_bytes(out) == before
    assert pack_dataset(data, out, shard_bytes=SHARD).shards_written == 0


def test_a_damaged_shard_of_the_same_size_is_written_again(tmp_path):
    data = random_dataset(tmp_path / "pets")
    out = tmp_path / "out"
    pack_dataset(data, out, shard_bytes=SHARD)
    before = tree_bytes(out)
    shard = out / "shards" / sorted(shard_names(out))[0]
    damaged = bytearray(shard.read_bytes())
    damaged[700] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    result = pack_dataset(data, out, shard_bytes=SHARD)
    assert result.shards_written == 1 and tree_bytes(out) == before


def test_an_unchanged_re_pack_reads_no_settled_shard_again(tmp_path, monkeypatch):
    """Kept shards are checked through the hash cache, as the images are: once a shard's digest
    is known for its size and mtime, re-packing (every `data upload`) does not read it again."""
    from orchestrator.dataset import manifest

    data = random_dataset(tmp_path / "pets")
    out = tmp_path / "out"
    pack_dataset(data, out, shard_bytes=SHARD)
    shards = sorted((out / "shards").iterdir())
    for shard in shards:  # settled: written long enough ago for its digest to be remembered
        os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns - 10**10))
    read = []
    real = manifest.sha256_file
    def counting(path):
        if str(path).endswith(".tar"):
            read.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(manifest, "sha256_file", counting)
    assert pack_dataset(data, out, shard_bytes=SHARD).shards_written == 0
    assert sorted(read) == [shard.name for shard in shards]  # learned once
    read.clear()
    before = tree_bytes(out)
    assert pack_dataset(data, out, shard_bytes=SHARD).shards_written == 0
    assert read == [] and tree_bytes(out) == before


def big_jpegs(root):
    from PIL import Image

    for label, colour in (("red", (200, 10, 10)), ("green", (10, 200, 10))):
        (root / label).mkdir(parents=True)
        for i in range(3):
            image = Image.new("RGB", (200, 120), colour)
            image.putpixel((i, i), (255, 255, 255))
            image.save(root / label / f"{i}.jpg", quality=95)
    return root


def check_rows_match_bytes(out):
    doc = packed_dataset.read_index(str(out))
    for row in doc["files"]:
        blob = (out / "shards" / row["shard"]).read_bytes()[row["offset"]:row["offset"] + row["size"]]
        assert hashlib.sha256(blob).hexdigest() == row["sha256"]
    return doc


def test_max_side_after_an_encoder_upgrade_re_encodes_and_records_the_encoder(tmp_path, monkeypatch):
    from orchestrator.dataset import pack

    data = big_jpegs(tmp_path / "pics")
    out = tmp_path / "out"
    pack_dataset(data, out, max_side=64)
    first = check_rows_match_bytes(out)
    assert first["encoder"].startswith("Pillow ") and first["max_side"] == 64
    assert pack_dataset(data, tmp_path / "plain").shards and \
        packed_dataset.read_index(str(tmp_path / "plain"))["encoder"] is None
    # another encoder version: the recorded digests are not reused, the new one is recorded
    monkeypatch.setattr(pack, "JPEG_QUALITY", 70)  # what an upgraded encoder does: other bytes
    monkeypatch.setattr(pack, "_encoder", lambda: "Pillow 99.0.0 (jpg 9)")
    pack_dataset(data, out, max_side=64)
    second = check_rows_match_bytes(out)
    assert second["encoder"] == "Pillow 99.0.0 (jpg 9)"
    assert {r["sha256"] for r in second["files"]}.isdisjoint(r["sha256"] for r in first["files"])
    # other bytes under the same version string (a codec library changed beneath it): the shards
    # to write re-encode, and the pack takes the new digests instead of failing
    monkeypatch.setattr(pack, "JPEG_QUALITY", 50)
    for shard in (out / "shards").iterdir():
        shard.unlink()
    pack_dataset(data, out, max_side=64)
    third = check_rows_match_bytes(out)
    assert {r["sha256"] for r in third["files"]}.isdisjoint(r["sha256"] for r in second["files"])
    assert third["encoder"] == second["encoder"]


# -- the index is checked before anything trusts it ---------------------------------------------------

def _index_doc(tmp_path):
    data = random_dataset(tmp_path / "pets", per_class=3)
    pack_dataset(data, tmp_path / "out", shard_bytes=SHARD)
    return json.loads((tmp_path / "out" / "index.json").read_text())


DAMAGES = {
    "shard name is a path": (lambda d: d["shards"][0].update(name="../../x"), "shards[0] has the name '../../x'"),
    "row names a path": (lambda d: d["files"][0].update(shard="../../etc/passwd"), "names the shard"),
    "label not a class": (lambda d: d["files"][0].update(label="wolf"), "label 'wolf'"),
    "missing key": (lambda d: d["files"][1].pop("offset"), "outside its shard"),
    "wrong type": (lambda d: d["files"][1].update(size="12"), "outside its shard"),
    "beyond the shard": (lambda d: d["files"][2].update(offset=d["shards"][0]["size"] * 10), "outside its shard"),
    "bad digest": (lambda d: d["files"][0].update(sha256="xyz"), "sha256 'xyz'"),
    "classes not a list": (lambda d: d.update(classes="cat"), "'classes'"),
    "shards missing": (lambda d: d.pop("shards"), "'shards' and 'files'"),
    "row not an object": (lambda d: d["files"].__setitem__(0, 7), "files[0] is not an object"),
    "absolute path": (lambda d: d["files"][0].update(path="/etc/passwd"), "relative path"),
    "path climbing out": (lambda d: d["files"][0].update(path="cat/../../escape.png"), "relative path"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_index_is_a_dataset_error_not_a_traceback(tmp_path, damage):
    from remote_scripts.folder_dataset import DatasetError

    doc = _index_doc(tmp_path)
    change, message = DAMAGES[damage]
    change(doc)
    data = json.dumps(doc).encode()
    with pytest.raises(DatasetError, match="damaged") as caught:
        packed_dataset.parse_index(data, "index.json")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    (tmp_path / "out" / "index.json").write_bytes(data)
    with pytest.raises(DatasetError, match="damaged"):
        packed_dataset.PackedDataset(str(tmp_path / "out"))


def claim_a_huge_member(doc):
    """Raise the first shard's declared size to 64 GiB and one of its members' with it: a
    consistent index (parse_index accepts it) that promises bytes the shard file lacks."""
    shard = doc["shards"][0]
    row = next(row for row in doc["files"] if row["shard"] == shard["name"])
    shard["size"] = 1 << 36
    row["size"] = shard["size"] - row["offset"]


def test_a_member_claimed_past_its_shard_files_end_is_one_line_not_a_64_gib_read(tmp_path):
    from remote_scripts.folder_dataset import DatasetError

    doc = _index_doc(tmp_path)
    claim_a_huge_member(doc)
    data = packed_dataset.index_bytes(doc)
    packed_dataset.parse_index(data, "index.json")  # within its declared size: only the file tells
    (tmp_path / "out" / "index.json").write_bytes(data)
    with pytest.raises(DatasetError, match=r"another size than its index says, e\.g\. shards/[0-9a-f]{64}\.tar: "
                                           r"\d+ bytes, not 68719476736") as caught:
        packed_dataset.PackedDataset(str(tmp_path / "out"))
    assert "\n" not in str(caught.value)


JOB_DAMAGES = {
    "shard name is a path": (lambda d: d["shards"][0].update(name="../../outside.tar"), "is damaged"),
    "a member past its shard's end": (claim_a_huge_member, "another size than its index says"),
}


@pytest.mark.parametrize("damage", sorted(JOB_DAMAGES))
def test_the_job_exits_2_on_a_damaged_index(tmp_path, damage):
    import subprocess
    import sys

    from remote_scripts import train

    doc = _index_doc(tmp_path)
    change, message = JOB_DAMAGES[damage]
    change(doc)
    (tmp_path / "out" / "index.json").write_bytes(packed_dataset.index_bytes(doc))  # as packed: is_packed
    result = subprocess.run([sys.executable, train.__file__, "--data", str(tmp_path / "out"), "--output",
                             str(tmp_path / "model"), "--weights", "none", "--epochs", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_re_serialized_index_is_read_and_a_broken_one_is_named_not_taken_for_images(tmp_path, run):
    """Another tool may rewrite index.json (pretty-printed): the folder is still the packed
    dataset, and an upload sends the index as packed. One that no longer parses is said to be
    so, where the folder once read as 'no images found'."""
    doc = _index_doc(tmp_path)
    out = tmp_path / "out"
    (out / "index.json").write_text(json.dumps(doc, indent=2))
    assert packed_dataset.is_packed(str(out))
    found = packed_dataset.PackedDataset(str(out)).scan()
    assert [path for path, _ in found.samples] == [row["path"] for row in doc["files"]]
    (out / "index.json").write_text(json.dumps(doc, indent=2)[:300])
    code, _, err = run(["train", out, "--backend", "local", "--runs-dir", tmp_path / "runs"], {})
    assert code == 2 and f"the dataset index {out / 'index.json'} is not valid JSON" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_loose_folder_with_an_index_json_and_a_shards_label_stays_loose(tmp_path):
    data = random_dataset(tmp_path / "pets", classes=("cat", "shards"), per_class=3)
    (data / "index.json").write_text('{"mine": true}\n')
    assert not packed_dataset.is_packed(str(data))


@pytest.mark.parametrize("size", ["nan", "inf", "-inf"])
def test_pack_shard_size_that_is_not_a_number_is_one_line(tmp_path, monkeypatch, capsys, size):
    import sys

    from orchestrator.cli.main import main as orchestrate_main

    data = random_dataset(tmp_path / "pets", per_class=2)
    monkeypatch.setattr(sys, "argv", ["orchestrate", "data", "pack", str(data), "--out", str(tmp_path / "out"),
                                      "--shard-size", size])
    with pytest.raises(SystemExit) as stop:
        orchestrate_main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--shard-size" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_an_upload_sends_the_index_as_packed_and_refuses_a_shard_of_another_size(tmp_path, azurite):
    import uuid

    from orchestrator.storage.blob import connect, parse_uri
    from orchestrator.storage.packed_blob import upload_packed
    from services.azurite import ACCOUNT

    container = connect(parse_uri(f"az://{ACCOUNT}/p{uuid.uuid4().hex[:12]}"),
                        {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    doc = _index_doc(tmp_path)
    (tmp_path / "out" / "index.json").write_text(json.dumps(doc, indent=2))
    upload_packed(tmp_path / "out", container, "pets")
    assert container.download_blob("pets/index.json").readall() == packed_dataset.index_bytes(doc)
    claim_a_huge_member(doc)
    (tmp_path / "out" / "index.json").write_bytes(packed_dataset.index_bytes(doc))
    with pytest.raises(UsageError, match=r"shards/[0-9a-f]{64}\.tar is \d+ bytes, not the 68719476736 the index"):
        upload_packed(tmp_path / "out", container, "again")
    assert not [blob.name for blob in container.list_blobs(name_starts_with="again/")]
