"""Packed, content-addressed uploads to a real Azurite (tests/services/azurite.py): `data upload`,
`data list`, `data gc` and storage/packed_blob.py."""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from conftest import wait_for
from orchestrator.dataset.pack import default_pack_dir, pack_dataset
from orchestrator.storage import packed_blob
from orchestrator.storage.blob import connect, parse_uri
from orchestrator.storage.packed_blob import collect_garbage, list_datasets, upload_packed
from services.azurite import ACCOUNT

ORCHESTRATE = os.path.join(os.path.dirname(sys.executable), "orchestrate")
SHARD = 64 << 10


@pytest.fixture
def dataset(tmp_path):
    rng = random.Random(1)
    root = tmp_path / "pets"
    for label in ("cat", "dog", "fox"):
        (root / label).mkdir(parents=True)
        for i in range(40):
            (root / label / f"{i:03d}.png").write_bytes(rng.randbytes(3000 + 11 * i))
    return root


@pytest.fixture
def env(azurite):
    return {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}


@pytest.fixture
def container(env):
    return connect(parse_uri(f"az://{ACCOUNT}/p{uuid.uuid4().hex[:12]}"), env)


@pytest.fixture
def counted(container, monkeypatch):
    """Counts of the container's listing and upload calls."""
    counts = {"list": 0, "upload": 0}
    for method, key in (("list_blob_names", "list"), ("list_blobs", "list"), ("upload_blob", "upload")):
        real = getattr(container, method)

        def wrapper(*args, _real=real, _key=key, **kwargs):
            counts[_key] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(container, method, wrapper)
    return counts


def check_remote_against_source(container, prefix, data):
    """Every shard blob's bytes hash to its name and metadata; the index is intact; every image's
    bytes, cut from the downloaded shards, equal the source file."""
    shards = {}
    for blob in container.list_blobs(name_starts_with=f"{prefix}/shards/", include=["metadata"]):
        content = container.download_blob(blob.name).readall()
        digest = hashlib.sha256(content).hexdigest()
        assert blob.name == f"{prefix}/shards/{digest}.tar" and blob.metadata["sha256"] == digest
        shards[f"{digest}.tar"] = content
    index_blob = container.get_blob_client(f"{prefix}/index.json")
    raw = index_blob.download_blob().readall()
    assert index_blob.get_blob_properties().metadata["sha256"] == hashlib.sha256(raw).hexdigest()
    doc = json.loads(raw)
    assert sorted(f["path"] for f in doc["files"]) == sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    for row in doc["files"]:
        assert shards[row["shard"]][row["offset"]:row["offset"] + row["size"]] == (data / row["path"]).read_bytes()
    return doc


def test_first_upload_sends_shards_then_the_index_and_a_repeat_sends_nothing(tmp_path, dataset, container, counted):
    pack = pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD)
    first = upload_packed(tmp_path / "packed", container, "pets")
    assert (first.shards_sent, first.bytes_sent, first.index_sent) == (pack.shards, pack.bytes, True)
    assert pack.shards > 4
    check_remote_against_source(container, "pets", dataset)
    counted.update(list=0, upload=0)
    again = upload_packed(tmp_path / "packed", container, "pets")
    assert (again.shards_sent, again.bytes_sent, again.index_sent, again.shards_skipped) == (0, 0, False, pack.shards)
    assert counted == {"list": 1, "upload": 0}


def test_a_changed_image_re_sends_only_its_shard(tmp_path, dataset, container, counted):
    pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD)
    upload_packed(tmp_path / "packed", container, "pets")
    (dataset / "dog" / "007.png").write_bytes(os.urandom(3100))
    pack = pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD)
    counted.update(list=0, upload=0)
    result = upload_packed(tmp_path / "packed", container, "pets")
    doc = json.loads((tmp_path / "packed" / "index.json").read_text())
    largest = max(s["size"] for s in doc["shards"])
    assert pack.shards_written == 1 and result.shards_sent == 1  # its bucket's shard only
    assert result.bytes_sent <= largest and result.index_sent
    assert counted == {"list": 1, "upload": result.shards_sent + 1}
    check_remote_against_source(container, "pets", dataset)


def test_data_upload_packs_by_default_and_no_pack_keeps_the_loose_layout(dataset, container, env, run):
    uri = f"az://{ACCOUNT}/{container.container_name}"
    code, out, err = run(["data", "upload", dataset, "--to", f"{uri}/packed", "--shard-size", "0.0625", "--json"], env)
    assert code in (0, None), err
    summary = json.loads(out)
    assert summary["shards_sent"] == summary["pack"]["shards"] > 1 and summary["images"] == 120
    assert summary["uri"] == f"{uri}/packed"
    check_remote_against_source(container, "packed", dataset)
    code, out, err = run(["data", "upload", dataset, "--to", f"{uri}/loose", "--no-pack", "--json"], env)
    assert code in (0, None), err
    assert json.loads(out)["files_sent"] == 120
    assert container.get_blob_client("loose/manifest.json").exists()
    code, out, err = run(["data", "upload", dataset, "--to", f"{uri}/x", "--no-pack", "--max-side", "64"], env)
    assert code == 2 and "packing options" in err and "Traceback" not in err


def shard_names(container, prefix):
    """The shard blobs under `prefix` now (none while the upload has not created the container)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return set(container.list_blob_names(name_starts_with=f"{prefix}/shards/"))
    except ResourceNotFoundError:
        return set()


def sent_at_least(proc, container, wanted):
    """Whether the upload `proc` has ended or the container shows `wanted` shards. The upload is
    stopped (SIGSTOP) while the container is listed, and left stopped when the answer is yes: it
    cannot send the rest between this look and its kill, however long the listing takes."""
    proc.send_signal(signal.SIGSTOP)
    if proc.poll() is not None or len(shard_names(container, "pets")) >= wanted:
        return True
    proc.send_signal(signal.SIGCONT)
    return False


def test_upload_killed_while_sending_resumes_to_a_complete_copy(tmp_path, dataset, container, env):
    """`orchestrate data upload` is killed (SIGKILL) three times while it sends shards, each time
    once the container shows a random 1 to 4 more of them than before that run (an observable
    point, not a time: a slow machine still kills it mid-upload); the final run sends only what
    is missing, and the copy matches the source blob for blob. The upload runs only between two
    looks at the container (sent_at_least), and has ~440 shards to send: far more than a run
    gets out while the test sleeps between looks."""
    rng = random.Random(7)
    for i in range(400):  # 34 kB each: one to a 64 KiB shard, ~440 shards in all (16 MB)
        (dataset / "fox" / f"big{i:03d}.png").write_bytes(os.urandom(34_000))
    command = [ORCHESTRATE, "data", "upload", str(dataset), "--to", f"az://{ACCOUNT}/{container.container_name}/pets",
               "--shard-size", "0.0625"]
    environment = {**os.environ, **env}
    present = set()
    for kill in range(3):
        wanted = len(present) + rng.randint(1, 4)
        with open(tmp_path / f"upload-{kill}.err", "wb") as err:
            proc = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=err)
            try:
                wait_for(lambda: sent_at_least(proc, container, wanted), f"run {kill + 1} sending shard {wanted}")
            finally:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, (tmp_path / f"upload-{kill}.err").read_text()  # killed, not ended
        now = shard_names(container, "pets")
        assert now > present  # this run sent some before it was killed
        present = now
    assert not container.get_blob_client("pets/index.json").exists()  # no run got as far as the index
    done = subprocess.run(command + ["--json"], env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stdout)
    # it resumed: skipped what the killed runs had sent (a request in flight at a kill may still
    # have landed after the listing, hence >=), and sent the rest
    assert final["shards_skipped"] >= len(present) > 0 and final["shards_sent"] > 0
    assert final["shards_skipped"] + final["shards_sent"] == final["pack"]["shards"] and final["images"] == 520
    check_remote_against_source(container, "pets", dataset)
    assert not any(p.name.startswith(".partial") for p in (default_pack_dir(dataset) / "shards").iterdir())
    repeat = subprocess.run(command + ["--json"], env=environment, capture_output=True, text=True, timeout=120)
    assert json.loads(repeat.stdout)["bytes_sent"] == 0


def test_list_and_gc_remove_only_shards_no_index_names(tmp_path, dataset, container, env, run):
    pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD)
    upload_packed(tmp_path / "packed", container, "pets")
    (dataset / "cat" / "001.png").write_bytes(os.urandom(3000))
    pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD)
    upload_packed(tmp_path / "packed", container, "pets")
    container.upload_blob("orphan/shards/" + "0" * 64 + ".tar", b"never indexed")  # an unfinished upload
    (listed,) = [d for d in list_datasets(container) if d.prefix == "pets"]
    doc = json.loads((tmp_path / "packed" / "index.json").read_text())
    assert (listed.kind, listed.images, listed.shards) == ("packed", 120, len(doc["shards"]))
    assert listed.bytes == sum(s["size"] for s in doc["shards"]) and 1 <= listed.unreferenced_shards <= 2
    uri = f"az://{ACCOUNT}/{container.container_name}"
    code, out, err = run(["data", "list", "--to", uri], env)
    assert code in (0, None) and "pets" in out and "orphan" in out and "incomplete" in out
    recent = collect_garbage(container)  # everything is younger than the grace period
    assert recent.removed == [] and recent.kept_recent == listed.unreferenced_shards + 1
    code, out, err = run(["data", "gc", "--to", uri, "--grace-hours", "0", "--json"], env)
    assert code in (0, None), err
    removed = json.loads(out)["removed"]
    assert len(removed) == listed.unreferenced_shards + 1 and "orphan/shards/" + "0" * 64 + ".tar" in removed
    assert [d.unreferenced_shards for d in list_datasets(container)] == [0]
    check_remote_against_source(container, "pets", dataset)  # what the index names is all still there


def test_missing_credentials_and_bad_shards_are_one_line(tmp_path, dataset, container, run):
    code, out, err = run(["data", "list"], {})
    assert code == 2 and "no container" in err and "Traceback" not in err
    pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD)
    shard = next((tmp_path / "packed" / "shards").iterdir())
    shard.write_bytes(b"damaged")
    with pytest.raises(packed_blob.UsageError, match="does not match its name"):
        upload_packed(tmp_path / "packed", container, "pets")


def test_a_shard_damaged_at_the_same_size_is_refused_then_re_packed_and_sent(tmp_path, dataset, container):
    pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD)
    shard = sorted((tmp_path / "packed" / "shards").iterdir())[0]
    damaged = bytearray(shard.read_bytes())
    damaged[600] ^= 0x01  # one bit: the size, the name and the index are as they were
    shard.write_bytes(bytes(damaged))
    with pytest.raises(packed_blob.UsageError, match="does not match its name"):
        upload_packed(tmp_path / "packed", container, "pets")
    assert pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD).shards_written == 1
    upload_packed(tmp_path / "packed", container, "pets")
    check_remote_against_source(container, "pets", dataset)


# -- gc and uploads at once, called in the racy orders ---------------------------------------------------

def later():
    """A time at which every shard is older than the default grace period."""
    return datetime.now(timezone.utc) + timedelta(hours=2)


def index_shards(folder):
    return {s["name"] for s in json.loads((folder / "index.json").read_text())["shards"]}


def two_versions(tmp_path, dataset, container):
    """Upload the dataset, then again with one image changed; (the image's first bytes, the shard
    only the first index named: there, unreferenced)."""
    original = (dataset / "dog" / "007.png").read_bytes()
    pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD)
    first = index_shards(tmp_path / "packed")
    upload_packed(tmp_path / "packed", container, "pets")
    (dataset / "dog" / "007.png").write_bytes(os.urandom(3100))
    pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD)
    upload_packed(tmp_path / "packed", container, "pets")
    (only_first,) = first - index_shards(tmp_path / "packed")
    assert container.get_blob_client(f"pets/shards/{only_first}").exists()
    return original, only_first


def back_to_the_first_version(tmp_path, dataset, original):
    (dataset / "dog" / "007.png").write_bytes(original)
    pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD)


def test_gc_between_an_uploads_listing_and_its_index_cannot_break_the_dataset(tmp_path, dataset, container,
                                                                              monkeypatch):
    original, only_first = two_versions(tmp_path, dataset, container)
    back_to_the_first_version(tmp_path, dataset, original)  # its shard is there: the upload skips it
    real = packed_blob._recorded_digest
    collected = []

    def gc_first(*args):  # after the upload's listing, before its index
        collected.append(collect_garbage(container, now=later()))
        monkeypatch.setattr(packed_blob, "_recorded_digest", real)
        return real(*args)

    monkeypatch.setattr(packed_blob, "_recorded_digest", gc_first)
    result = upload_packed(tmp_path / "packed", container, "pets")
    assert f"pets/shards/{only_first}" in collected[0].removed  # gc did delete it meanwhile...
    assert result.index_sent and result.shards_sent == 1  # ...and the upload sent it again
    check_remote_against_source(container, "pets", dataset)


def test_an_upload_between_gcs_listing_and_its_deletion_keeps_its_shards(tmp_path, dataset, container,
                                                                         monkeypatch):
    original, only_first = two_versions(tmp_path, dataset, container)
    back_to_the_first_version(tmp_path, dataset, original)
    real = packed_blob._read_stored_index
    uploaded = []

    def upload_meanwhile(client, folder):  # gc has listed and read the index: the upload runs now
        found = real(client, folder)
        monkeypatch.setattr(packed_blob, "_read_stored_index", real)
        uploaded.append(upload_packed(tmp_path / "packed", container, "pets"))
        return found

    monkeypatch.setattr(packed_blob, "_read_stored_index", upload_meanwhile)
    result = collect_garbage(container, now=later())
    assert uploaded[0].shards_skipped == len(index_shards(tmp_path / "packed"))  # it took the shard as there
    assert f"pets/shards/{only_first}" not in result.removed
    check_remote_against_source(container, "pets", dataset)


def test_a_shard_an_upload_claimed_after_gcs_listing_is_not_deleted(tmp_path, dataset, container, monkeypatch):
    """An upload refreshes the shards it found before writing its index; gc deletes a shard only
    while its ETag is the one it listed."""
    _, only_first = two_versions(tmp_path, dataset, container)
    real = packed_blob._scan_container

    def claimed_meanwhile(client, prefix):
        found = real(client, prefix)
        assert packed_blob._touch(container, "pets", {"name": only_first, "sha256": only_first[:64]})
        return found

    monkeypatch.setattr(packed_blob, "_scan_container", claimed_meanwhile)
    result = collect_garbage(container, now=later())
    assert result.removed == [] and container.get_blob_client(f"pets/shards/{only_first}").exists()
    monkeypatch.setattr(packed_blob, "_scan_container", real)
    assert collect_garbage(container, now=later()).removed == [f"pets/shards/{only_first}"]


def test_an_upload_deletes_the_old_shards_only_the_replaced_index_named(tmp_path, dataset, container):
    _, only_first = two_versions(tmp_path, dataset, container)  # young: the second upload kept it
    second = index_shards(tmp_path / "packed")
    (dataset / "dog" / "007.png").write_bytes(os.urandom(3200))
    pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD)
    (only_second,) = second - index_shards(tmp_path / "packed")
    result = upload_packed(tmp_path / "packed", container, "pets", now=later())
    assert (result.shards_deleted, result.shards_sent) == (1, 1)
    assert not container.get_blob_client(f"pets/shards/{only_second}").exists()
    assert container.get_blob_client(f"pets/shards/{only_first}").exists()  # no index it replaced: gc's
    check_remote_against_source(container, "pets", dataset)


def test_gc_pointed_below_a_dataset_keeps_what_its_index_names(tmp_path, dataset, container, env, run):
    pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD)
    upload_packed(tmp_path / "packed", container, "pets")
    uri = f"az://{ACCOUNT}/{container.container_name}/pets/shards"
    code, out, err = run(["data", "gc", "--to", uri, "--grace-hours", "0", "--json"], env)
    assert code in (0, None), err
    assert json.loads(out)["removed"] == []
    (listed,) = list_datasets(container, "pets/shards")
    assert (listed.kind, listed.images, listed.unreferenced_shards) == ("packed", 120, 0)
    check_remote_against_source(container, "pets", dataset)


def test_a_foreign_index_json_is_left_alone_by_list_and_gc(tmp_path, dataset, container, env, run):
    pack_dataset(dataset, tmp_path / "packed", shard_bytes=SHARD)
    upload_packed(tmp_path / "packed", container, "pets")
    container.upload_blob("photos/index.json", b'{"my": "own index", "shards": []}')
    container.upload_blob("photos/shards/" + "1" * 64 + ".tar", b"not ours to judge")
    container.upload_blob("junk/index.json", b"\xff not json")
    uri = f"az://{ACCOUNT}/{container.container_name}"
    code, out, err = run(["data", "list", "--to", uri, "--json"], env)
    assert code in (0, None), err
    assert {d["prefix"]: d["kind"] for d in json.loads(out)} == {"pets": "packed", "photos": "unknown"}
    code, out, err = run(["data", "gc", "--to", uri, "--grace-hours", "0", "--json"], env)
    assert code in (0, None), err
    summary = json.loads(out)
    assert summary["removed"] == [] and summary["unreadable"] == ["photos"] and "Traceback" not in err
    assert container.get_blob_client("photos/shards/" + "1" * 64 + ".tar").exists()


def test_one_prefix_holds_one_layout(dataset, container, env, run):
    uri = f"az://{ACCOUNT}/{container.container_name}"
    code, out, err = run(["data", "upload", dataset, "--to", uri, "--shard-size", "0.0625"], env)  # prefix: pets
    assert code in (0, None), err
    code, out, err = run(["data", "upload", dataset, "--to", uri, "--no-pack"], env)
    assert code == 2 and "holds a packed dataset" in err and "Traceback" not in err
    assert not container.get_blob_client("pets/manifest.json").exists()
    code, out, err = run(["data", "upload", dataset, "--to", f"{uri}/loose", "--no-pack"], env)
    assert code in (0, None), err
    code, out, err = run(["data", "upload", dataset, "--to", f"{uri}/loose"], env)
    assert code == 2 and "--no-pack" in err and "Traceback" not in err
    assert not container.get_blob_client("loose/index.json").exists()


@pytest.mark.parametrize("size", ["nan", "inf"])
def test_upload_shard_size_that_is_not_a_number_is_one_line(dataset, env, run, size):
    code, out, err = run(["data", "upload", dataset, "--to", f"az://{ACCOUNT}/never", "--shard-size", size], env)
    assert code == 2 and "--shard-size" in err and "Traceback" not in err
