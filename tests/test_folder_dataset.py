"""Scanning, readability checks and the stratified split of folder-per-label datasets."""
import collections

import pytest

from imagegen import make_dataset
from remote_scripts import imaging
from remote_scripts.folder_dataset import DatasetError, scan, stratified_split


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_finds_images_by_extension_in_any_case_and_nested_folders(tmp_path):
    for name in ("a.jpg", "b.JPEG", "c.Png", "d.bmp", "e.gif", "f.TIF", "g.tiff", "h.webp", "deep/er/i.jpg"):
        touch(tmp_path / "cats" / name)
    touch(tmp_path / "dogs" / "x.jpg")
    found = scan(str(tmp_path))
    assert found.classes == ["cats", "dogs"]
    assert collections.Counter(found.classes[label] for _, label in found.samples) == {"cats": 9, "dogs": 1}
    assert ("cats/deep/er/i.jpg", 0) in found.samples


def test_scan_ignores_hidden_files_hidden_folders_and_non_images(tmp_path):
    touch(tmp_path / "cats" / "a.jpg")
    touch(tmp_path / "cats" / ".hidden.jpg")
    touch(tmp_path / "cats" / ".thumbs" / "b.jpg")
    touch(tmp_path / "cats" / "notes.txt")
    touch(tmp_path / "cats" / "noext")
    touch(tmp_path / ".git" / "c.jpg")       # a hidden folder is not a class
    touch(tmp_path / "dogs" / "d.jpeg")
    touch(tmp_path / "readme.jpg")           # a file at the top is not in any class
    found = scan(str(tmp_path))
    assert found.classes == ["cats", "dogs"]
    assert [path for path, _ in found.samples] == ["cats/a.jpg", "dogs/d.jpeg"]


def test_scan_reports_empty_folders_apart_from_classes(tmp_path):
    touch(tmp_path / "a" / "1.jpg")
    touch(tmp_path / "b" / "1.jpg")
    touch(tmp_path / "empty" / "readme.txt")
    found = scan(str(tmp_path))
    assert found.classes == ["a", "b"] and found.empty_classes == ["empty"]


@pytest.mark.parametrize("layout, message", [
    (None, "data folder not found"),
    ("file", "not a folder"),
    ({}, "no images found"),
    ({"only": ["1.jpg", "2.jpg"]}, "need at least 2 classes with images, found 1 (only)"),
])
def test_scan_rejects_unusable_data_with_a_clear_message(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout == "file":
        touch(root)
    elif isinstance(layout, dict):
        root.mkdir()
        for label, names in layout.items():
            for name in names:
                touch(root / label / name)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scan(str(root))


def decode_failure(root, path):
    try:
        imaging.load_rgb(str(root / path))
        return None
    except imaging.DECODE_ERRORS as exc:
        return imaging.describe_decode_error(exc)


def test_decoding_names_the_problem_and_accepts_every_colour_mode(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=12, corrupt=3, modes=True)
    reasons = {path: decode_failure(root, path) for path, _ in scan(str(root)).samples}
    bad = {path: reason for path, reason in reasons.items() if reason}
    assert len(bad) == 3 and all("corrupt" in path for path in bad)
    assert any("truncated" in reason for reason in bad.values())
    assert all(reasons[path] is None for path in reasons if "_mode" in path)  # L, RGBA, P, CMYK, I;16


def samples_of(counts):
    return [(f"{label}/{i:03d}.jpg", label_index)
            for label_index, (label, n) in enumerate(counts.items()) for i in range(n)]


def test_split_is_stratified_disjoint_and_complete():
    counts = {"a": 50, "b": 20, "c": 7}
    samples = samples_of(counts)
    train, val, test = stratified_split(samples, list(counts), 0.2, 0.1, seed=0)
    assert sorted(train + val + test) == sorted(samples)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    per = {name: collections.Counter(label for _, label in part)
           for name, part in (("train", train), ("val", val), ("test", test))}
    assert [per["val"][i] for i in range(3)] == [10, 4, 1]
    assert [per["test"][i] for i in range(3)] == [5, 2, 1]  # every class gets at least one


def test_split_is_deterministic_for_a_seed_and_input_order():
    samples = samples_of({"a": 30, "b": 30})
    first = stratified_split(samples, ["a", "b"], 0.1, 0.1, seed=7)
    assert stratified_split(list(reversed(samples)), ["a", "b"], 0.1, 0.1, seed=7) == first
    assert stratified_split(samples, ["a", "b"], 0.1, 0.1, seed=8) != first


def test_split_without_val_or_test_keeps_everything_for_training():
    samples = samples_of({"a": 3, "b": 2})
    train, val, test = stratified_split(samples, ["a", "b"], 0.0, 0.0, seed=0)
    assert len(train) == 5 and val == [] and test == []


def test_too_small_class_is_named_with_its_count():
    samples = samples_of({"big": 20, "tiny": 2})
    with pytest.raises(DatasetError, match=r"class 'tiny' has 2 usable image\(s\); at least 3 are needed"):
        stratified_split(samples, ["big", "tiny"], 0.1, 0.1, seed=0)


@pytest.mark.parametrize("val, test", [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)])
def test_bad_fractions_are_rejected(val, test):
    with pytest.raises(DatasetError, match="--val-fraction and --test-fraction"):
        stratified_split(samples_of({"a": 10, "b": 10}), ["a", "b"], val, test, seed=0)
