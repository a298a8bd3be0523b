"""Dataset sources beyond local folders (orchestrator/dataset/sources.py), against a real moto S3
server (tests/services/moto_s3.py) and a real Azurite: an s3:// or az:// prefix packs to the
byte-identical index and shards of the same images in a folder, with every label source, without
a copy of the loose images on disk; `data upload` and `train` take the URI; what the store refuses
is one line and exit code 2."""
import hashlib
import json
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from imagegen import colour_of, make_dataset, picture
from orchestrator.dataset.pack import default_pack_dir, pack_dataset
from orchestrator.dataset.sources import S3Source
from orchestrator.errors import UsageError
from orchestrator.storage.blob import connect, parse_uri
from remote_scripts.folder_dataset import scan, scan_listing
from services.azurite import ACCOUNT
from services.moto_s3 import ACCESS_KEY, SECRET_KEY

SHARD = 64 << 10
CLASSES = ("blue", "green", "red")
FAST = ["--backend", "local", "--arch", "resnet18", "--weights", "none", "--image-size", "32",
        "--batch-size", "16", "--workers", "0", "--mode", "linear", "--epochs", "1"]


def bucket_name():
    return f"b{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pets(tmp_path):
    """A folder-per-label dataset with what a scan must skip: a hidden file, a hidden folder, a
    non-image file, a label folder without images."""
    root = make_dataset(tmp_path / "pets", per_class=12, corrupt=1)
    (root / "red" / ".hidden").mkdir()
    picture(colour_of("red"), 32, np.random.default_rng(2)).save(root / "red" / ".hidden" / "x.jpg")
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "README.txt").write_text("pets\n")
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images yet\n")
    return root


def flat_folder(root, per_class=8):
    """Every image in one folder, named after its class (red7.jpg), and a tags.tsv that says
    warm or cool, with a header and one row naming a missing file."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for name in CLASSES:
        for i in range(per_class):
            picture(colour_of(name), 32, rng).save(root / f"{name}{i}.jpg", "JPEG", quality=90)
    rows = [f"{name}{i}.jpg\t{'warm' if name == 'red' else 'cool'}" for name in CLASSES for i in range(per_class)]
    (root / "meta").mkdir()
    (root / "meta" / "tags.tsv").write_text("image\tlabel\n" + "\n".join(rows) + "\nmissing.jpg\twarm\n")
    return root


def packed_files(folder):
    """{relative path: bytes} of everything in a pack folder."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def assert_same_pack(local_pack, remote_pack):
    assert local_pack.to_dict() | {"out_dir": ""} == remote_pack.to_dict() | {"out_dir": ""}
    ours, theirs = packed_files(local_pack.out_dir), packed_files(remote_pack.out_dir)
    assert ours == theirs  # index.json and every shard, byte for byte


def test_an_s3_prefix_packs_to_the_same_bytes_as_the_folder_and_stages_no_image(tmp_path, pets, moto_s3, s3_env,
                                                                                  monkeypatch):
    uri = moto_s3.put_folder(pets, bucket_name(), "datasets/pets")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # any temporary file would land here
    (tmp_path / "tmp").mkdir()
    local = pack_dataset(pets, tmp_path / "local", shard_bytes=SHARD, cache=False)
    remote = pack_dataset(uri, tmp_path / "remote", shard_bytes=SHARD)
    assert remote.shards > 3 and remote.files == 36
    assert "folder 'empty' has no images and is not a class" in remote.warnings
    assert_same_pack(local, remote)
    # nothing but the index and the shards was written: no file anywhere holds one image's bytes
    assert set(packed_files(tmp_path / "remote")) == {"index.json"} | {f"shards/{s['name']}" for s in
                                                                       json.loads((tmp_path / "remote" / "index.json")
                                                                                  .read_text())["shards"]}
    images = {hashlib.sha256(p.read_bytes()).hexdigest() for p in pets.rglob("*") if p.is_file()}
    written = [p for p in tmp_path.rglob("*") if p.is_file() and pets not in p.parents]
    assert not [p for p in written if hashlib.sha256(p.read_bytes()).hexdigest() in images]
    assert not list((tmp_path / "tmp").iterdir())

    reads = []
    real_read = S3Source._read
    monkeypatch.setattr(S3Source, "_read", lambda self, key: reads.append(key) or real_read(self, key))
    again = pack_dataset(uri, tmp_path / "remote", shard_bytes=SHARD)  # digests cached by ETag, shards kept
    assert (again.shards_written, again.shards_kept, reads) == (0, remote.shards, [])


def test_labels_from_file_names_and_from_a_table_object_under_the_prefix(tmp_path, moto_s3, s3_env):
    data = flat_folder(tmp_path / "photos")
    uri = moto_s3.put_folder(data, bucket_name(), "photos")
    by_name = pack_dataset(uri, tmp_path / "by-name", labels="filename")
    assert json.loads((tmp_path / "by-name" / "index.json").read_text())["classes"] == list(CLASSES)
    assert_same_pack(pack_dataset(data, tmp_path / "by-name-local", labels="filename", cache=False), by_name)

    table = pack_dataset(uri, tmp_path / "table", labels="meta/tags.tsv")
    doc = json.loads((tmp_path / "table" / "index.json").read_text())
    assert doc["classes"] == ["cool", "warm"] and doc["labels"] == "meta/tags.tsv"
    assert "no usable label: tags.tsv line 26: no such file missing.jpg" in table.warnings
    assert_same_pack(pack_dataset(data, tmp_path / "table-local", labels="meta/tags.tsv", cache=False), table)


@pytest.mark.parametrize("labels", ["folder", "filename", "meta/tags.tsv"])
def test_a_listing_scans_as_the_folder_does(tmp_path, pets, labels):
    data = flat_folder(tmp_path / "photos") if labels == "meta/tags.tsv" else pets
    paths = [p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()]
    walked = scan(str(data), labels=labels)
    listed = scan_listing("s3://bucket/pets", paths, lambda path: (data / path).read_bytes(), labels=labels)
    assert (listed.classes, listed.samples, listed.empty_classes) == (walked.classes, walked.samples,
                                                                       walked.empty_classes)
    assert listed.problems == walked.problems


def test_the_pack_folder_of_a_uri_is_the_same_from_any_working_folder(tmp_path, monkeypatch):
    first = default_pack_dir("s3://bucket/datasets/eurosat")
    monkeypatch.chdir(tmp_path)
    assert default_pack_dir("s3://bucket/datasets/eurosat/") == first
    assert first.name.startswith("eurosat-") and default_pack_dir("s3://bucket/datasets/other") != first


@pytest.mark.slow
def test_train_on_an_s3_prefix_with_the_local_backend(tmp_path, pets, moto_s3, s3_env, run):
    uri = moto_s3.put_folder(pets, bucket_name(), "pets")
    code, out, err = run(["train", uri, *FAST, "--runs-dir", tmp_path / "runs", "--json"], s3_env)
    assert code in (0, None), err
    result = json.loads(out)
    assert result["status"] == "completed"
    assert json.load(open(result["outputs"]["labels.json"])) == ["blue", "green", "red"]
    run_dir = tmp_path / "runs" / result["run_id"]
    assert result["run_id"].startswith("pets-")
    spec = json.load(open(run_dir / "spec.json"))
    assert spec["data"] == str(default_pack_dir(uri))  # the job read the packed copy
    assert "packed dataset: 36 images" in open(run_dir / "logs" / "train.log").read()


@pytest.fixture
def blob_env(azurite, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    return {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}


def test_data_upload_from_s3_to_blob_storage_sends_the_shards_once(tmp_path, pets, moto_s3, s3_env, blob_env, run):
    uri = moto_s3.put_folder(pets, bucket_name(), "pets")
    to = f"az://{ACCOUNT}/u{uuid.uuid4().hex[:12]}"
    code, out, err = run(["data", "upload", uri, "--to", to, "--shard-size", "0.0625", "--json"], s3_env)
    assert code in (0, None), err
    first = json.loads(out)
    assert first["uri"] == f"{to}/pets" and first["images"] == 36
    assert first["shards_sent"] == first["pack"]["shards"] > 1 and first["index_sent"]
    assert first["pack"]["out_dir"] == str(default_pack_dir(uri))
    container = connect(parse_uri(to), os.environ)
    stored = {b.name for b in container.list_blobs()}
    assert stored == {"pets/index.json"} | {f"pets/shards/{name}" for name in os.listdir(
        Path(first["pack"]["out_dir"]) / "shards")}

    code, out, err = run(["data", "upload", uri, "--to", to, "--shard-size", "0.0625", "--json"], s3_env)
    assert code in (0, None), err
    again = json.loads(out)
    assert (again["shards_sent"], again["bytes_sent"], again["index_sent"]) == (0, 0, False)
    assert again["pack"]["shards_written"] == 0

    code, out, err = run(["data", "upload", uri, "--to", to, "--no-pack"], s3_env)
    assert code == 2 and "always packed" in err and err.strip().count("\n") == 0


def test_a_loose_dataset_in_blob_storage_packs_the_same_as_the_folder(tmp_path, pets, blob_env, azurite):
    """...also when the container holds keys that are no path inside the prefix ('red//x.png',
    and 'red/../../x.png', which names a blob above it): no files of the dataset, never read."""
    target = parse_uri(f"az://{ACCOUNT}/s{uuid.uuid4().hex[:12]}/loose/pets")
    container = connect(target, os.environ)
    container.create_container()
    for path in pets.rglob("*"):
        if path.is_file():
            container.upload_blob(f"{target.prefix}/{path.relative_to(pets).as_posix()}", path.read_bytes())
    container.upload_blob(f"{target.prefix}/red//double.png", b"not of the dataset")
    azurite.put_blob_as_named(target.container, f"{target.prefix}/red/../../secret.png", b"not of the dataset")
    local = pack_dataset(pets, tmp_path / "local", shard_bytes=SHARD, cache=False)
    assert_same_pack(local, pack_dataset(target.uri, tmp_path / "remote", shard_bytes=SHARD))

    with pytest.raises(UsageError, match=r"container 'nosuchcontainer' does not exist"):
        pack_dataset(f"az://{ACCOUNT}/nosuchcontainer/pets", tmp_path / "none")


def one_line_error(run, uri, tmp_path, env):
    code, out, err = run(["data", "pack", uri, "--out", tmp_path / "out"], env)
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert SECRET_KEY not in err and ACCESS_KEY not in err
    return err


def test_a_missing_bucket_an_empty_prefix_and_no_credentials_are_one_line(tmp_path, pets, moto_s3, s3_env, run,
                                                                          monkeypatch):
    assert "S3 bucket 'nosuchbucket' does not exist" in one_line_error(run, "s3://nosuchbucket/pets", tmp_path, s3_env)
    uri = moto_s3.put_folder(pets, bucket_name(), "pets")
    assert f"{uri}x is empty: no objects under it" in one_line_error(run, uri + "x", tmp_path, s3_env)
    assert "bad S3 URI" in one_line_error(run, "s3://No_Such/pets", tmp_path, s3_env)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    assert "no AWS credentials for" in one_line_error(run, uri, tmp_path, {})


def test_refused_credentials_and_access_denied_are_one_line(tmp_path, pets, moto_s3, s3_env, run, monkeypatch):
    """With moto's IAM enforcement on: unknown keys, then a real IAM user without any policy."""
    from moto.core.authorization import enable_iam_authentication

    import boto3

    uri = moto_s3.put_folder(pets, bucket_name(), "pets")
    iam = boto3.client("iam", endpoint_url=moto_s3.endpoint)
    user = f"u{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    with enable_iam_authentication():
        err = one_line_error(run, uri, tmp_path, s3_env)  # the dummy keys: no such user
        assert "refused the AWS credentials (InvalidAccessKeyId)" in err
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        err = one_line_error(run, uri, tmp_path, {})
        assert "denied listing" in err and "AccessDenied" in err
        assert key["SecretAccessKey"] not in err and key["AccessKeyId"] not in err


def test_read_ahead_holds_at_most_its_bytes(tmp_path, pets, moto_s3, s3_env, monkeypatch):
    """With READ_AHEAD_BYTES below two images, an object is read only once the one before it
    has been handed over: never two held at once. The bytes are the objects' all the same."""
    from orchestrator.dataset import sources

    uri = moto_s3.put_folder(pets, bucket_name(), "datasets/pets")
    source = S3Source(uri)
    paths = sorted(source.objects())
    monkeypatch.setattr(sources, "READ_AHEAD_BYTES", min(o.size for o in source.objects().values()) + 1)
    started = []
    read = source._read
    source._read = lambda key: started.append(key) or read(key)
    for handed, data in enumerate(source.read_many(paths), 1):
        assert len(started) == handed  # the next read starts after this one is taken
        assert data == (pets / paths[handed - 1]).read_bytes()
    assert handed == len(paths)
