"""The decoded-image cache: streaming decode, reduced JPEG decode, persistent entries, LRU, CLI.

Real image files (tests/imagegen.py) decoded by the job's real code into real cache folders;
the CLI runs as the installed `orchestrate` command. Images are small so that the file stays fast.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from imagegen import make_dataset, picture
from remote_scripts import cache_store, folder_dataset, imagecache, imaging
from remote_scripts.runtime import Dist

SIZE = 16


class RecordingReport:
    """The reporter load_data talks to, keeping what it was told."""

    def __init__(self):
        self.lines, self.events, self.warnings = [], [], []

    def log(self, text):
        self.lines.append(text)

    def event(self, type_, **fields):
        self.events.append(dict(fields, type=type_))

    def warn(self, message):
        self.warnings.append(message)

    def throttle(self, phase, total, last=True, **fields):
        return self

    def update(self, done, **fields):
        pass


class DecodedPaths:
    """The paths decoded, by this process and by the decoding processes it forks: a line each,
    appended to one file."""

    def __init__(self, path):
        self.path = path
        path.write_text("")

    def append(self, decoded):
        with open(self.path, "a") as log:
            log.write(f"{decoded}\n")

    def lines(self):
        return self.path.read_text().splitlines()

    def clear(self):
        self.path.write_text("")

    def __len__(self):
        return len(self.lines())

    def __eq__(self, other):
        return self.lines() == list(other)


@pytest.fixture
def decoded(monkeypatch, tmp_path):
    """The paths the job decodes, through the real decode."""
    paths = DecodedPaths(tmp_path / "decoded.log")
    real = imagecache.decode

    def counting(path, spec):
        paths.append(path)
        return real(path, spec)

    monkeypatch.setattr(imagecache, "decode", counting)
    return paths


def job_args(data, cache, **overrides):
    values = dict(data=str(data), cache_dir=str(cache), cache_size_gb=20.0, workers=2, image_size=SIZE,
                  val_fraction=0.2, test_fraction=0.2, seed=0)
    values.update(overrides)
    return argparse.Namespace(**values)


def load(args, dist=None, report=None):
    return imagecache.load_data(args, folder_dataset.scan(args.data), dist or Dist(), report or RecordingReport())


def small_dataset(root, classes=("red", "blue"), per_class=4, **kwargs):
    return make_dataset(root, classes=classes, per_class=per_class, size=SIZE, **kwargs)


def entry_keys(cache):
    return {entry.key for entry in cache_store.list_entries(str(cache))}


# --------------------------------------------------------------------------------------------
# Reuse and keys


def test_a_second_run_on_the_same_data_decodes_nothing(tmp_path, decoded):
    data = small_dataset(tmp_path / "data")
    first = load(job_args(data, tmp_path / "cache"))
    assert len(decoded) == 8
    report = RecordingReport()
    second = load(job_args(data, tmp_path / "cache"), report=report)
    assert len(decoded) == 8  # nothing decoded again
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))
    assert first.split_digest() == second.split_digest()
    assert any("found in the cache" in line for line in report.lines)
    assert len(entry_keys(tmp_path / "cache")) == 1


def test_the_same_files_elsewhere_reuse_the_entry(tmp_path, decoded):
    """Keyed by content, not location: a copy of the dataset (another checkout, a download) hits."""
    data = small_dataset(tmp_path / "data")
    load(job_args(data, tmp_path / "cache"))
    copy = tmp_path / "copy"
    for path in data.rglob("*"):
        target = copy / path.relative_to(data)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.write_bytes(path.read_bytes())
    decoded.clear()
    load(job_args(copy, tmp_path / "cache"))
    assert decoded == [] and len(entry_keys(tmp_path / "cache")) == 1


def test_a_changed_file_or_size_gives_a_new_entry(tmp_path, decoded):
    data = small_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    load(job_args(data, cache))
    first = entry_keys(cache)
    changed = sorted((data / "red").glob("*.png"))[0]
    picture((0, 0, 0), SIZE, np.random.default_rng(7)).save(changed)
    decoded.clear()
    dataset = load(job_args(data, cache))
    assert len(decoded) == 8
    second = entry_keys(cache)
    assert len(second) == 2 and first < second
    row = dataset.paths.index(str(changed.relative_to(data)))
    assert np.array_equal(dataset.images[row], imaging.decode_pixels(str(changed), dataset.spec))
    load(job_args(data, cache, image_size=SIZE * 2))
    assert len(entry_keys(cache)) == 3


def test_unchanged_files_are_not_read_again_to_find_their_entry(tmp_path, monkeypatch):
    """Digests are remembered by (size, mtime_ns): a rerun on a network mount only stats files."""
    data = small_dataset(tmp_path / "data")
    settled = time.time() - 60  # files written just now are "racily clean" and hashed every time
    for path in data.rglob("*.*"):
        os.utime(path, (settled, settled))
    load(job_args(data, tmp_path / "cache"))
    hashed = []
    real = cache_store.sha256_file
    monkeypatch.setattr(cache_store, "sha256_file", lambda path: hashed.append(path) or real(path))
    load(job_args(data, tmp_path / "cache"))
    assert hashed == []
    touched = sorted(data.rglob("*.png"))[0]
    touched.write_bytes(touched.read_bytes())  # same content, new mtime: hashed, same entry
    load(job_args(data, tmp_path / "cache"))
    assert hashed == [str(touched)] and len(entry_keys(tmp_path / "cache")) == 1


def test_a_failed_decode_leaves_no_entry_behind(tmp_path, monkeypatch, decoded):
    """An exception half way (SIGTERM's Canceled, a full disk) removes the half-filled entry."""
    data = small_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    real = imagecache.decode

    def dies_at_the_fifth(path, spec):
        if len(decoded) == 5:
            raise KeyboardInterrupt  # as a SIGINT would
        return real(path, spec)

    monkeypatch.setattr(imagecache, "decode", dies_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        load(job_args(data, cache, workers=0))
    assert entry_keys(cache) == set()


def test_a_decode_canceled_in_its_workers_leaves_no_entry_and_no_process(tmp_path):
    """SIGTERM to the job's whole process group while two decoding processes work (as the local
    backend's cancel sends it): the job cancels, its workers are gone with it, and the
    half-filled entry is removed (the workers' copies of its locks do not keep it)."""
    data = small_dataset(tmp_path / "data", per_class=40)
    cache = tmp_path / "cache"
    script = (
        "import signal, sys, time; sys.path.insert(0, 'tests')\n"
        "from remote_scripts import imagecache, cache_store\n"
        "from test_image_cache import job_args, load\n"
        "def stop(signum, frame): raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "real = imagecache.decode\n"
        "def slow(path, spec):\n"
        "    print('decoding', flush=True); time.sleep(0.05); return real(path, spec)\n"
        "imagecache.decode = slow\n"
        "imagecache.DECODE_BLOCK = 4\n"
        "try:\n"
        f"    load(job_args({str(data)!r}, {str(cache)!r}, workers=2))\n"
        "except KeyboardInterrupt:\n"
        f"    print('canceled', cache_store.list_entries({str(cache)!r}), flush=True)\n")
    job = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True,
                           cwd=os.path.dirname(os.path.dirname(__file__)))
    for _ in range(4):
        assert job.stdout.readline() == "decoding\n"
    os.killpg(job.pid, signal.SIGTERM)
    rest = job.communicate(timeout=60)[0]
    assert job.returncode == 0 and "canceled []" in rest, rest
    with pytest.raises(ProcessLookupError):  # no decoding process outlived the job
        os.killpg(job.pid, 0)
    assert entry_keys(cache) == set()


def test_a_killed_decode_is_never_taken_for_a_complete_entry(tmp_path, decoded):
    """kill -9 in the middle of decoding: no entry.json and no lease are left; the next run
    decodes everything again and gets every pixel right."""
    data = small_dataset(tmp_path / "data", per_class=30)
    cache = tmp_path / "cache"
    script = (
        "import sys, time; sys.path.insert(0, 'tests')\n"
        "from remote_scripts import imagecache\n"
        "from test_image_cache import job_args, load\n"
        "real = imagecache.decode\n"
        "def slow(path, spec):\n"
        "    print('decoding', flush=True); time.sleep(0.05); return real(path, spec)\n"
        "imagecache.decode = slow\n"
        f"load(job_args({str(data)!r}, {str(cache)!r}, workers=0))\n")
    job = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                           cwd=os.path.dirname(os.path.dirname(__file__)))
    for _ in range(3):
        assert job.stdout.readline() == "decoding\n"
    job.kill()
    job.wait(timeout=10)
    [entry] = cache_store.list_entries(str(cache))
    assert not entry.complete and not entry.in_use and (cache / entry.key / cache_store.IMAGES).exists()
    dataset = load(job_args(data, cache))
    assert len(decoded) == 60 and entry_keys(cache) == {entry.key}
    assert cache_store.list_entries(str(cache))[0].complete
    expected = [imaging.decode_pixels(str(data / path), dataset.spec) for path in dataset.paths]
    assert np.array_equal(np.asarray(dataset.images), np.stack(expected))


# --------------------------------------------------------------------------------------------
# Size cap and leases


def entry_bytes(tmp_path):
    """What one small_dataset entry takes on disk."""
    data = small_dataset(tmp_path / "probe", classes=("white", "black"))
    load(job_args(data, tmp_path / "probe-cache")).close()
    return cache_store.list_entries(str(tmp_path / "probe-cache"))[0].bytes


def test_the_least_recently_used_entry_is_evicted_first(tmp_path):
    cache = tmp_path / "cache"
    cap_gb = 2.5 * entry_bytes(tmp_path) / 1e9  # room for two entries
    datasets = {name: small_dataset(tmp_path / name, classes=(name, "white")) for name in ("red", "green", "blue")}
    keys = {}
    for name in ("red", "green"):
        load(job_args(datasets[name], cache, cache_size_gb=cap_gb)).close()
        keys[name] = (entry_keys(cache) - set(keys.values())).pop()
    load(job_args(datasets["red"], cache, cache_size_gb=cap_gb)).close()  # red used again: green is older
    report = RecordingReport()
    load(job_args(datasets["blue"], cache, cache_size_gb=cap_gb), report=report).close()
    remaining = entry_keys(cache)
    assert keys["red"] in remaining and keys["green"] not in remaining and len(remaining) == 2
    assert any("evicted 1 least recently used" in line for line in report.lines) and not report.warnings


def test_an_entry_in_use_by_a_live_run_survives_eviction(tmp_path):
    cache = tmp_path / "cache"
    tiny = 1e-9  # one byte: everything not in use goes
    red = small_dataset(tmp_path / "red", classes=("red", "white"))
    held = load(job_args(red, cache))
    [red_key] = entry_keys(cache)
    # Another process holds it (a running job); ours is released.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from remote_scripts import cache_store; "
         f"lease = cache_store.Lease.acquire({str(cache)!r}, {red_key!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert holder.stdout.readline() == "held\n"
    held.close()
    report = RecordingReport()
    blue = load(job_args(small_dataset(tmp_path / "blue", classes=("blue", "white")), cache, cache_size_gb=tiny),
                report=report)
    assert red_key in entry_keys(cache) and len(entry_keys(cache)) == 2
    assert [entry.in_use for entry in cache_store.list_entries(str(cache))] == [True, True]
    assert "in use by running jobs" in report.warnings[0]
    holder.kill()  # a dead run pins nothing: the kernel drops its lock
    holder.wait(timeout=10)
    blue.close()
    load(job_args(small_dataset(tmp_path / "green", classes=("green", "white")), cache, cache_size_gb=tiny))
    assert red_key not in entry_keys(cache) and len(entry_keys(cache)) == 1


def test_other_local_ranks_map_the_entry_local_rank_0_filled(tmp_path, decoded):
    """Under torchrun every process of a machine reads the one entry; only local rank 0 decodes."""
    data = small_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    first = load(job_args(data, cache), dist=Dist(world=2, rank=0, local_rank=0))
    count = len(decoded)
    other = load(job_args(data, cache), dist=Dist(world=2, rank=1, local_rank=1))
    assert len(decoded) == count
    assert np.array_equal(np.asarray(first.images), np.asarray(other.images))
    assert not other.images.flags.writeable


# --------------------------------------------------------------------------------------------
# Decoding


def test_unreadable_files_are_skipped_with_reasons(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=8, size=SIZE, corrupt=3)
    report = RecordingReport()
    dataset = load(job_args(data, tmp_path / "cache", workers=2), report=report)
    assert sorted(s["path"] for s in dataset.skipped) == sorted(
        p for p, _ in folder_dataset.scan(str(data)).samples if "corrupt" in p)
    assert all(str(data) not in s["reason"] for s in dataset.skipped)  # named relative to --data
    assert report.events[0]["type"] == "skipped" and report.events[0]["count"] == 3
    usable = set(dataset.train) | set(dataset.val) | set(dataset.test)
    assert usable == {i for i, p in enumerate(dataset.paths) if "corrupt" not in p}
    again = load(job_args(data, tmp_path / "cache"))  # the reasons come back from the entry
    assert again.skipped == dataset.skipped


def test_workers_are_processes_that_write_what_the_main_thread_would(tmp_path, monkeypatch):
    """--workers 2: blocks (of 5 images here) decoded in two other processes; --workers 0: in
    this thread. The same pixels and the same reasons, in place, either way."""
    decoders = DecodedPaths(tmp_path / "decoders.log")
    real = imagecache.decode

    def recording(path, spec):
        decoders.append(f"{os.getpid()} {threading.get_ident()}")
        return real(path, spec)

    monkeypatch.setattr(imagecache, "decode", recording)
    monkeypatch.setattr(imagecache, "DECODE_BLOCK", 5)
    data = make_dataset(tmp_path / "data", per_class=8, size=SIZE, corrupt=3)
    in_workers = load(job_args(data, tmp_path / "cache-2", workers=2))
    pids = {int(line.split()[0]) for line in decoders.lines()}
    assert len(pids) == 2 and os.getpid() not in pids
    decoders.clear()
    in_main = load(job_args(data, tmp_path / "cache-0", workers=0))
    assert set(decoders.lines()) == {f"{os.getpid()} {threading.get_ident()}"}
    assert np.array_equal(np.asarray(in_workers.images), np.asarray(in_main.images))
    assert in_workers.skipped == in_main.skipped and len(in_main.skipped) == 3


def test_the_hashing_window_is_bounded(tmp_path):
    """map_bounded (the digests' thread pool): no future per image up front, the items consumed
    run at most a small window ahead."""
    consumed, ahead = [], []

    def items():
        for i in range(500):
            consumed.append(i)
            yield i

    for done, value in enumerate(cache_store.map_bounded(lambda i: i * 2, items(), workers=3), 1):
        assert value == (done - 1) * 2
        ahead.append(len(consumed) - done)
    assert max(ahead) <= 3 * cache_store.WINDOW_PER_WORKER


def jpeg_dataset(root, size=(200, 150)):
    """JPEGs at least twice the input size, so that the reduced decode applies, and PNGs."""
    rng = np.random.default_rng(3)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
            image.save(root / label / f"{i}.jpg", quality=90)
        image.save(root / label / "big.png")
    return root


def test_large_jpegs_decode_reduced_and_exactly_as_prediction_preprocesses(tmp_path):
    """The draft decode changes the pixels a little, so training and prediction must share it."""
    data = jpeg_dataset(tmp_path / "data")
    spec = imaging.preprocess_spec(32)
    jpeg = str(data / "a" / "0.jpg")
    assert imaging.load_rgb(jpeg, (32, 32)).size == (50, 38)  # 1/4 scale: still >= 32 both ways
    assert imaging.load_rgb(jpeg).size == (200, 150)
    full = imaging.resize(imaging.load_rgb(jpeg), spec)
    assert not np.array_equal(imaging.decode_pixels(jpeg, spec), full)
    # A model made before jpeg_draft existed keeps getting the full decode it was trained on.
    assert np.array_equal(imaging.decode_pixels(jpeg, {k: v for k, v in spec.items() if k != "jpeg_draft"}), full)

    dataset = load(job_args(data, tmp_path / "cache", image_size=32, val_fraction=0, test_fraction=0))
    ours = imagecache.Batches(dataset, torch.device("cpu"), channels_last=False).images(np.arange(len(dataset.paths)))
    reference = np.stack([imaging.preprocess_file(str(data / p), dataset.spec) for p in dataset.paths])
    assert np.array_equal(ours.numpy(), reference)


# --------------------------------------------------------------------------------------------
# Batches and the prefetcher


def test_prefetched_batches_equal_direct_ones_and_stop_with_the_loop(tmp_path):
    dataset = load(job_args(small_dataset(tmp_path / "data", per_class=6), tmp_path / "cache"))
    batches = imagecache.Batches(dataset, torch.device("cpu"), channels_last=False)
    index_batches = [np.array([3, 1, 4]), np.array([0, 5]), np.array([9, 2, 6])]
    got = list(batches.prefetch(index_batches))
    assert [idx.tolist() for idx, _, _ in got] == [idx.tolist() for idx in index_batches]
    for idx, pixels, labels in got:
        assert torch.equal(pixels, batches.pixels(idx)) and torch.equal(labels, batches.labels(idx))

    before = threading.active_count()
    loop = batches.prefetch(iter([np.array([i]) for i in range(100)]), depth=2)
    next(loop)
    loop.close()  # a break, an exception or SIGTERM in the training loop
    assert threading.active_count() == before

    def failing():
        yield np.array([0])
        raise OSError("the cache's disk went away")

    with pytest.raises(OSError, match="disk went away"):
        list(batches.prefetch(failing()))


# --------------------------------------------------------------------------------------------
# CPUs


def cgroup_files(tmp_path, membership, files):
    (tmp_path / "proc-cgroup").write_text(membership)
    for name, text in files.items():
        (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / name).write_text(text)
    return str(tmp_path / "fs"), str(tmp_path / "proc-cgroup")


@pytest.mark.parametrize("membership, files, expected", [
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 2),                               # docker --cpus 1.5, v2
    ("0::/job/step\n", {"job/cpu.max": "100000 100000\n", "job/step/cpu.max": "max 100000\n"}, 1),
    ("4:cpu,cpuacct:/docker/abc\n", {"cpu,cpuacct/cpu.cfs_quota_us": "100000\n",  # v1, container's own mount
                                     "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1),
    ("4:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                           "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),    # no quota
])
def test_available_cpus_follow_the_cgroup_quota(tmp_path, membership, files, expected):
    affinity = len(os.sched_getaffinity(0))
    found = imagecache.available_cpus(*cgroup_files(tmp_path, membership, files))
    assert found == min(affinity, expected or affinity)


# --------------------------------------------------------------------------------------------
# orchestrate cache list / clear


def test_cache_list_and_clear_through_the_cli(tmp_path, cli):
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    root = tmp_path / "xdg" / "orchestrate" / "images"
    assert cache_store.default_root() != str(root)  # the command finds it through the environment
    result = cli("cache", "list", env=env)
    assert result.returncode == 0 and "is empty" in result.stdout

    held = load(job_args(small_dataset(tmp_path / "red", classes=("red", "white")), root))
    load(job_args(small_dataset(tmp_path / "blue", classes=("blue", "white")), root)).close()
    result = cli("cache", "list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert {e["key"] for e in entries} == entry_keys(root)
    assert all(e["images"] == 8 and e["image_size"] == SIZE and e["complete"] and e["bytes"] > 8 * SIZE * SIZE * 3
               for e in entries)
    in_use = {e["key"]: e["in_use"] for e in entries}
    assert sorted(in_use.values()) == [False, True]
    assert entries[0]["last_used"] <= entries[1]["last_used"]
    table = cli("cache", "list", env=env)
    assert table.returncode == 0 and all(e["key"] in table.stdout for e in entries)

    busy = next(key for key, used in in_use.items() if used)
    idle = next(key for key, used in in_use.items() if not used)
    result = cli("cache", "clear", idle[:8], "--cache-dir", root)
    assert result.returncode == 0 and "removed 1 entry" in result.stdout
    assert entry_keys(root) == {busy}
    result = cli("cache", "clear", "--all", env=env)
    assert result.returncode == 0 and f"kept {busy}: a running job is using it" in result.stdout
    held.close()
    result = cli("cache", "clear", "--all", env=env)
    assert result.returncode == 0 and "removed 1 entry" in result.stdout and entry_keys(root) == set()

    for args in (["clear"], ["clear", "--all", "abc"], ["clear", "ffffffff"]):
        result = cli("cache", *args, env=env)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
