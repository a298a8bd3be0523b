"""The bad-input corpus (tests/badinput.py) through the scan, the client's checks, an upload to real
Azurite, one real training run on the local backend, and the memory that run and decoding take.

What each kind must do is written next to it in badinput.py; this module holds the proof. The
training run mixes good images with every image kind at once, because that is how bad files
arrive: a few among thousands, which must cost their own place in the dataset and nothing more.
"""
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from badinput import (CLASSES, GOOD_SIZE, IGNORED, LEFT_OUT, SKIPPED, TRAINED, make_config_mistakes, make_corpus,
                      make_non_utf8_class, make_unreadable_class)
from conftest import ORCHESTRATE, run_cli
from remote_scripts import folder_dataset, imaging
from services.azurite import ACCOUNT

TRAIN = ["--backend", "local", "--arch", "resnet18", "--weights", "none", "--image-size", str(GOOD_SIZE),
         "--mode", "linear", "--epochs", "2", "--workers", "2"]

# The words each unreadable kind's reason must hold, in metrics.json and when decoded here.
REASONS = {
    "truncated_jpeg": "image file is truncated",
    "zero_bytes": "cannot identify image file",
    "html_as_jpg": "cannot identify image file",
    "png_bad_checksum": "cannot identify image file",
    "png_bomb": "DecompressionBombError",
    "jpeg_bomb": "DecompressionBombError",
    "symlink_loop": "Too many levels of symbolic links",
    "broken_symlink": "No such file or directory",
    "unreadable_permissions": "Permission denied",
}
# Files the upload refuses in one line (it must read every byte it sends, and name each blob).
UNREADABLE_ON_UPLOAD = ("symlink_loop", "broken_symlink", "unreadable_permissions")
# The training run's peak RSS (torch, the model, ONNX export, 2 decoding threads), measured at
# 1.05 GiB with the 48-megapixel JPEG and both bombs in the corpus; a full decode of the huge
# image alone would add 144 MB per decoding thread, a bomb decoded in full 30 GB.
RUN_PEAK_RSS_BOUND = 1536 << 20
# What decoding the huge image and the bombs at the training size may add to a bare process.
DECODE_RSS_GROWTH_BOUND = 48 << 20

# Runs the command as a child subreaper and reaps every descendant, so that RUSAGE_CHILDREN's
# ru_maxrss covers the detached job too (the local backend starts it in a session of its own).
PEAK_RSS_WRAPPER = """
import ctypes, os, resource, subprocess, sys
PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
code = subprocess.call(sys.argv[1:])
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
print("peak_rss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "data")


@pytest.fixture(scope="module")
def listed(corpus):
    """{relative path: label} as the job's scan lists the corpus."""
    found = folder_dataset.scan(str(corpus.root))
    return {path: found.classes[label] for path, label in found.samples}


def one_line_error(result):
    """The stderr of a refused command: exactly one line, 'error: ...', and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# -- the corpus itself ---------------------------------------------------------------------------

def test_the_corpus_has_at_least_20_documented_kinds_and_is_small(corpus, tmp_path):
    mistakes = make_config_mistakes(tmp_path)
    assert len(corpus.kinds) + len(mistakes) >= 20
    for kind in corpus.kinds.values():
        assert kind.expect in (SKIPPED, TRAINED, IGNORED, LEFT_OUT) and kind.why and kind.paths, kind
        assert all(os.path.lexists(corpus.root / path) for path in kind.paths), kind
    on_disk = sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(corpus.root) for f in files)
    assert on_disk < 8 << 20


# -- the scan (the job's, which the client runs before a job starts) -------------------------------

def test_the_scan_lists_every_image_kind_and_nothing_else(corpus, listed):
    assert set(listed) == set(corpus.good) | set(corpus.paths(SKIPPED)) | set(corpus.paths(TRAINED))
    assert not set(listed) & set(corpus.paths(IGNORED))
    assert not [path for path in listed if "/parent-loop/" in path]  # the looping folder is not followed
    assert sorted(entry["path"] for entry in folder_dataset.scan(str(corpus.root)).skipped) == corpus.paths(LEFT_OUT)
    assert [path for path in listed if path.count("/") > 10] == list(corpus.kinds["deeply_nested"].paths)


def test_labels_keep_their_spaces_and_accents_and_an_empty_folder_is_no_class(corpus):
    found = folder_dataset.scan(str(corpus.root))
    assert found.classes == sorted(CLASSES) == ["red", "sea side", "Écorce"]
    assert found.empty_classes == ["empty class"]


def test_the_same_image_under_two_labels_is_two_samples(corpus, listed):
    first, second = corpus.kinds["same_image_two_labels"].paths
    assert (corpus.root / first).read_bytes() == (corpus.root / second).read_bytes()
    assert {listed[first], listed[second]} == {"sea side", "Écorce"}


def test_each_unreadable_kind_fails_to_decode_with_its_reason_and_each_odd_one_decodes(corpus):
    spec = imaging.preprocess_spec(GOOD_SIZE)
    for kind in corpus.kinds.values():
        for path in kind.paths:
            if kind.expect == SKIPPED:
                with pytest.raises(imaging.DECODE_ERRORS) as failure:
                    imaging.decode_pixels(str(corpus.root / path), spec)
                assert REASONS[kind.name] in imaging.describe_decode_error(failure.value), kind.name
            elif kind.expect == TRAINED:
                pixels = imaging.decode_pixels(str(corpus.root / path), spec)
                assert pixels.shape == (GOOD_SIZE, GOOD_SIZE, 3) and pixels.dtype == np.uint8, kind.name


def test_a_chmod_000_file_is_expected_as_this_process_can_read_it(corpus):
    """Tests run as root here, where chmod 000 does not stop a read: the kind then expects the image
    trained on; elsewhere it expects it skipped with 'Permission denied'. Either way it is checked."""
    kind = corpus.kinds["unreadable_permissions"]
    path = corpus.root / kind.paths[0]
    assert path.stat().st_mode & 0o777 == 0
    readable = os.access(path, os.R_OK)
    assert kind.expect == (TRAINED if readable else SKIPPED)


@pytest.mark.parametrize("mistake", ["data_is_a_file", "data_missing", "one_class_only", "no_images"])
def test_a_configuration_mistake_is_one_line_and_exit_2_before_any_job(mistake, tmp_path):
    data, message = make_config_mistakes(tmp_path)[mistake]
    with pytest.raises(folder_dataset.DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        folder_dataset.scan(str(data))
    result = run_cli("train", data, *TRAIN, "--runs-dir", tmp_path / "runs", timeout=120)
    assert result.returncode == 2 and message in one_line_error(result)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run was started


@pytest.mark.slow
def test_a_class_whose_every_image_is_unreadable_ends_the_job_with_exit_2_and_one_reason(tmp_path):
    data, message = make_unreadable_class(tmp_path / "data")
    result = run_cli("train", data, *TRAIN, "--runs-dir", tmp_path / "runs", timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), result.stderr


@pytest.mark.slow
def test_file_names_that_are_not_utf8_reach_predictions_csv_and_predict_as_their_bytes(tmp_path):
    """os.walk names such a file with surrogate escapes; every file the job and predict write keeps
    its bytes (surrogateescape) instead of failing the run at its end (it once did, in
    predictions.csv) or the prediction file."""
    data, names = make_non_utf8_class(tmp_path / "data")
    result = run_cli("train", data, *TRAIN, "--runs-dir", tmp_path / "runs", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    predictions = Path(out["outputs"]["predictions.csv"]).read_bytes()
    assert [name for name in names if b"latin/" + name in predictions]  # the test split holds one
    assert Path(out["report"]).is_file()
    scored = tmp_path / "scored.csv"
    result = run_cli("predict", out["outputs"]["model.onnx"], data / "latin", "--out", scored, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert all(name in scored.read_bytes() for name in names)


# -- the upload to real Azurite -------------------------------------------------------------------

def shown(path):
    """A path as a one-line message prints it: the bytes of a non-UTF-8 name as \\xNN."""
    return path.encode(errors="surrogateescape").decode(errors="backslashreplace")


def unreadable_kinds(corpus):
    """{path: kind} of the files no client command can read (the chmod 000 one only where
    permissions hold for this process)."""
    return {corpus.kinds[name].paths[0]: name for name in UNREADABLE_ON_UPLOAD if corpus.kinds[name].expect == SKIPPED}


def accepted_after_refusals(command, corpus, refusable, env=None):
    """Run `command` until it succeeds, removing the file each refusal names; (result, refused kinds).

    Each refusal must be exit 2 with one line that names one of `refusable` ({path: kind}) and says
    why: what a client command cannot read it refuses before it writes or sends anything."""
    refused = []
    for _ in range(len(refusable) + 1):
        result = run_cli(*command, env=env, timeout=120)
        if result.returncode != 2:
            break
        line = one_line_error(result)
        path = next((p for p in refusable if shown(p) in line), None)
        assert path, line
        refused.append(refusable[path])
        assert ("not UTF-8" if refusable[path] == "non_utf8_file_name" else "cannot read") in line
        (corpus.root / path).unlink()
    assert result.returncode == 0, result.stderr
    return result, sorted(refused)


@pytest.mark.slow
def test_packing_refuses_unreadable_files_in_one_line_then_packs_and_trains_every_listed_image(tmp_path):
    """`orchestrate data pack` stores every listed file as it is, the corrupt ones too (it does not
    decode without --max-side), warns about the image under two labels and the empty folder, and
    keeps the non-UTF-8 name (the index is JSON, the shards are named by digest). A run on the
    packed folder then skips the very files a run on the loose folder skips."""
    corpus = make_corpus(tmp_path / "data")
    refusable = unreadable_kinds(corpus)
    result, refused = accepted_after_refusals(["data", "pack", corpus.root, "--out", tmp_path / "packed", "--json"],
                                              corpus, refusable)
    assert refused == sorted(refusable.values())
    packed = json.loads(result.stdout)
    index = json.loads((tmp_path / "packed" / "index.json").read_text())
    listed = {path for path, _ in folder_dataset.scan(str(corpus.root)).samples}
    assert {row["path"] for row in index["files"]} == listed and packed["files"] == len(listed)
    assert packed["unique"] == len(listed) - 1  # the twin is stored once
    assert any("identical image under labels sea side, Écorce" in w for w in packed["warnings"])
    assert any("'empty class' has no images" in w for w in packed["warnings"])
    assert sorted(w.split(":")[0][len("left out "):] for w in packed["warnings"] if w.startswith("left out ")) == \
        corpus.paths(LEFT_OUT)
    assert "Traceback" not in result.stderr

    result = run_cli("train", tmp_path / "packed", *TRAIN, "--runs-dir", tmp_path / "runs", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(Path(json.loads(result.stdout)["outputs"]["metrics.json"]).read_text())
    corrupt = set(corpus.paths(SKIPPED)) - set(refusable)  # packed as they are, skipped by the job
    assert {entry["path"] for entry in metrics["skipped"]} == corrupt
    assert sum(metrics["split"].values()) == len(listed - corrupt)


def test_upload_refuses_what_it_cannot_read_or_name_in_one_line_then_sends_the_rest(azurite, tmp_path):
    """Packed (the default), every listed file goes into the shards as it is, corrupt or not; a
    file that cannot be read (a looping or dangling symlink, no permission) stops the upload before
    anything is sent, in one line naming it. --no-pack sends one blob per file, so it also refuses a
    file name that is not UTF-8 (a blob name is Unicode text); the corrupt files are sent byte for byte."""
    from orchestrator.storage.blob import connect, parse_uri

    corpus = make_corpus(tmp_path / "data")
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    to = f"az://{ACCOUNT}/bad{uuid.uuid4().hex[:8]}"
    refusable = unreadable_kinds(corpus)
    result, refused = accepted_after_refusals(["data", "upload", corpus.root, "--to", f"{to}/packed", "--json"],
                                              corpus, refusable, env)
    assert refused == sorted(refusable.values())
    listed = {path for path, _ in folder_dataset.scan(str(corpus.root)).samples}
    assert json.loads(result.stdout)["pack"]["files"] == len(listed)
    container = connect(parse_uri(to), env)
    packed_blobs = [b.name for b in container.list_blobs(name_starts_with="packed/")]
    assert not [name for name in packed_blobs if name.endswith(tuple(imaging.IMAGE_EXTENSIONS))]  # shards only

    name = corpus.kinds["non_utf8_file_name"].paths[0]
    result, refused = accepted_after_refusals(["data", "upload", corpus.root, "--to", f"{to}/loose", "--no-pack",
                                               "--json"], corpus, {name: "non_utf8_file_name"}, env)
    assert refused == ["non_utf8_file_name"]
    blobs = {b.name[len("loose/"):] for b in container.list_blobs(name_starts_with="loose/")}
    sent = listed - {name}
    assert blobs == sent | {"manifest.json"} and json.loads(result.stdout)["files_sent"] == len(sent)
    assert not blobs & set(corpus.paths(IGNORED))
    for path in ("Écorce/bomb.png", "sea side/bad_html.jpg", "red/bad_truncated.jpg", "Écorce/huge.jpg"):
        assert container.download_blob(f"loose/{path}").readall() == (corpus.root / path).read_bytes()


# -- one real training run over the whole corpus ---------------------------------------------------

@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """`orchestrate train` on the corpus, under a subreaper that measures the job's peak RSS."""
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "XDG_STATE_HOME": str(home / "state"), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache")}
    command = [sys.executable, "-c", PEAK_RSS_WRAPPER, str(ORCHESTRATE), "train", str(corpus.root), *TRAIN,
               "--runs-dir", str(home / "runs"), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    peak_kib = int(result.stderr.strip().splitlines()[-1].split()[-1])
    out = json.loads(result.stdout)
    metrics = json.loads(Path(out["outputs"]["metrics.json"]).read_text())
    log = (Path(out["run_dir"]) / "logs" / "train.log").read_text(errors="replace")
    return {"out": out, "metrics": metrics, "log": log, "peak_rss": peak_kib << 10, "cache": home / "cache",
            "stderr": result.stderr}


@pytest.mark.slow
def test_the_run_completes_and_lists_every_corrupt_image_with_its_reason(corpus, trained):
    assert trained["out"]["status"] == "completed"
    assert "Traceback" not in trained["log"] and "Traceback" not in trained["stderr"]
    skipped = {entry["path"]: entry["reason"] for entry in trained["metrics"]["skipped"]}
    assert sorted(skipped) == sorted(corpus.paths(SKIPPED) + corpus.paths(LEFT_OUT))
    for kind in corpus.kinds.values():
        for path in kind.paths if kind.expect in (SKIPPED, LEFT_OUT) else ():
            assert REASONS.get(kind.name, "outside the data folder") in skipped[path], (path, skipped[path])
            assert str(corpus.root) not in skipped[path]  # named relative to DATA, as `path` is
    assert f"{len(corpus.paths(LEFT_OUT))} link(s) lead outside the data folder" in trained["log"]


@pytest.mark.slow
def test_the_odd_but_valid_images_are_trained_on(corpus, listed, trained):
    usable = set(listed) - set(corpus.paths(SKIPPED))
    assert set(corpus.paths(TRAINED)) <= usable
    assert sum(trained["metrics"]["split"].values()) == len(usable)
    assert trained["metrics"]["confusion_matrix"]["labels"] == sorted(CLASSES)


@pytest.mark.slow
def test_exif_orientation_is_not_applied_and_predict_decodes_exactly_as_training(corpus, listed, trained):
    """The job decodes the pixels as stored, ignoring the EXIF orientation tag (as torchvision's
    ImageFolder does); orchestrate predict feeds the model the very same input, so the two agree."""
    from orchestrator.inference.classifier import OnnxClassifier

    path = corpus.kinds["exif_rotated"].paths[0]
    entries = [p for p in trained["cache"].rglob("images.npy")]
    assert len(entries) == 1
    row = np.load(entries[0], mmap_mode="r")[sorted(listed).index(path)]
    half = GOOD_SIZE // 2
    assert row[:, :half - 2].mean() > 240 > row[:, half + 2:].mean()  # the bright half is still on the left
    model = OnnxClassifier(trained["out"]["outputs"]["model.onnx"])
    np.testing.assert_array_equal(model._load(str(corpus.root / path)),
                                  imaging.normalize(np.asarray(row), model.preprocess))


# -- memory ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_run_peak_memory_stays_bounded_with_the_huge_image_and_the_bombs(trained):
    assert 0 < trained["peak_rss"] < RUN_PEAK_RSS_BOUND, f"peak RSS {trained['peak_rss'] >> 20} MiB"


def decode_rss_growth(code):
    """How much a fresh Python child's peak RSS grows (bytes) while it runs `code` after importing
    imaging: the child reads its own high-water mark (VmHWM) before and after. Not ru_maxrss: a
    child's starts at its parent's RSS when it was forked (Linux keeps it across exec)."""
    probe = ("from remote_scripts import imaging\n"
             "def hwm():\n"
             "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
             "before = hwm()\n" + code + "\nprint(hwm() - before)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    return int(result.stdout) << 10


def test_the_huge_image_and_the_bombs_decode_in_bounded_memory(corpus):
    """At the training size the 8000x6000 JPEG is decoded at 1/8 scale (1000x750) and each bomb is
    refused from its header, so decoding them adds a few MB to a bare process; the same image
    decoded in full takes its 144 MB and more, which shows that the bound measures something."""
    huge = str(corpus.root / corpus.kinds["huge_jpeg"].paths[0])
    bombs = [str(corpus.root / corpus.kinds[name].paths[0]) for name in ("png_bomb", "jpeg_bomb")]
    reduced = decode_rss_growth(
        f"spec = imaging.preprocess_spec({GOOD_SIZE})\n"
        f"assert imaging.decode_pixels({huge!r}, spec).shape == ({GOOD_SIZE}, {GOOD_SIZE}, 3)\n"
        f"for bomb in {bombs!r}:\n"
        "    try:\n"
        "        imaging.decode_pixels(bomb, spec)\n"
        "        raise SystemExit('a bomb decoded')\n"
        "    except imaging.DECODE_ERRORS:\n"
        "        pass")
    assert reduced < DECODE_RSS_GROWTH_BOUND, f"decoding grew RSS by {reduced >> 20} MiB"
    assert decode_rss_growth(f"imaging.load_rgb({huge!r})") > 144 << 20
