"""Links in a dataset folder: followed only where they stay inside it.

A dataset from elsewhere may hold `cat/innocent.png -> /etc/passwd` or a class folder linked to
some other folder of this machine. The scan (remote_scripts/folder_dataset.py) leaves out every
link whose real path lies outside DATA and lists it in Scan.skipped; pack, upload and the job
take their files from the scan, so the bytes behind such a link never reach a shard, a blob or a
model. Here: the scan, `orchestrate data pack`, and `orchestrate data upload` (packed and
--no-pack) to a real Azurite. The job's report is checked by the bad-input corpus's run
(tests/test_bad_input.py, kinds LEFT_OUT in tests/badinput.py).
"""
import json
import os
import uuid

import pytest

from orchestrator.storage.blob import connect, parse_uri
from remote_scripts.folder_dataset import DatasetError, scan
from services.azurite import ACCOUNT

SECRET = b"root:x:0:0:root:/root:/bin/bash\n" + os.urandom(64)  # what a link to /etc/passwd would send
INSIDE = ["cat/c0.png", "cat/c1.png", "cat/c2.png", "cat/twin.png", "dog/d0.png", "dog/d1.png", "dog/d2.png"]
OUTSIDE = ["cat/innocent.png", "cat/sub/deep", "fox"]  # a file link, a nested folder link, a class folder link


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def linked(tmp_path):
    """DATA with two real classes, links that stay inside it (kept or, for a folder pointing up,
    not walked) and links that lead outside it to files holding SECRET."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    write(outside / "passwd", SECRET)
    for folder in ("fox", "deep"):
        for i in range(3):
            write(outside / folder / f"{folder}{i}.png", SECRET + bytes([i]))
    for label in ("cat", "dog"):
        for i in range(3):
            write(data / label / f"{label[0]}{i}.png", os.urandom(500 + i))
    (data / "cat" / "innocent.png").symlink_to(outside / "passwd")          # absolute
    (data / "cat" / "sub").mkdir()
    (data / "cat" / "sub" / "deep").symlink_to("../../../outside/deep")     # relative, climbing out
    (data / "fox").symlink_to(outside / "fox", target_is_directory=True)
    (data / "cat" / "twin.png").symlink_to("../dog/d0.png")                 # inside: kept
    (data / "dog" / "up").symlink_to("..", target_is_directory=True)        # inside, a loop: not walked
    return data


def tree_bytes(folder):
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


@pytest.mark.parametrize("labels", ["folder", "table"])
def test_the_scan_leaves_out_and_lists_the_links_leading_outside(linked, labels):
    if labels == "table":
        rows = [f"{path}\t{path.split('/')[0]}" for path in INSIDE]
        rows += ["cat/innocent.png\tcat", "cat/sub/deep/deep0.png\tcat", "fox/fox0.png\tfox"]
        (linked / "tags.tsv").write_text("\n".join(rows) + "\n")
    found = scan(str(linked), labels="tags.tsv" if labels == "table" else "folder")
    assert found.classes == ["cat", "dog"] and [path for path, _ in found.samples] == INSIDE
    left_out = {entry["path"]: entry["reason"] for entry in found.skipped}
    expected = OUTSIDE if labels == "folder" else ["cat/innocent.png", "cat/sub/deep/deep0.png", "fox/fox0.png"]
    assert sorted(left_out) == expected and found.problems == []
    assert all("outside the data folder" in reason for reason in left_out.values())


def test_file_name_labels_leave_out_the_same_links(linked):
    found = scan(str(linked), labels="filename")
    assert sorted(path for path, _ in found.samples) == INSIDE
    assert sorted(entry["path"] for entry in found.skipped) == OUTSIDE


def test_data_reached_through_a_link_is_inside_itself(linked, tmp_path):
    """DATA given as a link (~/data -> /mnt/disk/data) is the folder it names: nothing is left out
    for it, and its own links are judged against that folder."""
    (tmp_path / "alias").symlink_to(linked, target_is_directory=True)
    found = scan(str(tmp_path / "alias"))
    assert [path for path, _ in found.samples] == INSIDE
    assert sorted(entry["path"] for entry in found.skipped) == OUTSIDE


def test_a_class_lost_to_a_link_outside_is_named_in_the_error(tmp_path):
    data = tmp_path / "data"
    write(data / "cat" / "c0.png", b"x")
    write(tmp_path / "elsewhere" / "dog" / "d0.png", b"y")
    (data / "dog").symlink_to(tmp_path / "elsewhere" / "dog", target_is_directory=True)
    with pytest.raises(DatasetError, match=r"found 1 \(cat\).*1 link\(s\) leading outside it were left out, "
                                           r"e\.g\. dog") as caught:
        scan(str(data))
    assert "\n" not in str(caught.value)


def test_data_pack_leaves_them_out_of_the_shards_and_warns(linked, tmp_path, run):
    code, out, err = run(["data", "pack", linked, "--out", tmp_path / "packed", "--json"], {})
    assert code in (0, None), err
    result = json.loads(out)
    assert result["files"] == len(INSIDE)
    for path in OUTSIDE:
        assert f"warning: left out {path}: a link that leads outside the data folder" in err
    index = json.loads((tmp_path / "packed" / "index.json").read_text())
    assert [row["path"] for row in index["files"]] == INSIDE
    assert SECRET[:32] not in tree_bytes(tmp_path / "packed")


@pytest.mark.parametrize("layout", ["packed", "no-pack"])
def test_data_upload_sends_nothing_behind_them(linked, azurite, run, layout):
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    to = f"az://{ACCOUNT}/l{uuid.uuid4().hex[:12]}"
    code, out, err = run(["data", "upload", linked, "--to", f"{to}/pets", "--json"]
                         + (["--no-pack"] if layout == "no-pack" else []), env)
    assert code in (0, None), err
    assert "warning: left out cat/innocent.png: a link that leads outside the data folder" in err
    container = connect(parse_uri(to), env)
    names = sorted(blob.name for blob in container.list_blobs())
    if layout == "no-pack":
        assert names == [f"pets/{path}" for path in sorted(INSIDE + ["manifest.json"])]
    else:
        assert json.loads(out)["pack"]["files"] == len(INSIDE)
    for name in names:
        assert SECRET[:32] not in container.download_blob(name).readall(), name
