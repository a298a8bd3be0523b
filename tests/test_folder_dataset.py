"""Scanning, readability checks and the stratified split of folder-per-label datasets."""
import collections

import pytest

from imagegen import make_dataset
from remote_scripts import imaging
from remote_scripts.folder_dataset import DatasetError, label_source_for_job, sample_fraction, scan, stratified_split


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


# --------------------------------------------------------------------------------------------
# Label sources and the sample fraction


def test_filename_labels_are_the_leading_letters_as_in_ml_net(tmp_path):
    for name in ("CD7001-220.jpg", "CD7002.png", "UD13.jpg", "sub/UD14-x.jpg", "Écorce7.jpg", "123.jpg", "notes.txt"):
        touch(tmp_path / name)
    found = scan(str(tmp_path), labels="filename")
    assert found.classes == ["CD", "UD", "Écorce"]
    assert sorted((path, found.classes[label]) for path, label in found.samples) == [
        ("CD7001-220.jpg", "CD"), ("CD7002.png", "CD"), ("UD13.jpg", "UD"), ("sub/UD14-x.jpg", "UD"),
        ("Écorce7.jpg", "Écorce")]
    assert found.problems == ["123.jpg: the file name does not begin with a letter, so it gives no label"]


@pytest.mark.parametrize("name, delimiter, header", [("tags.tsv", "\t", ""), ("tags.tsv", "\t", "path\tlabel\n"),
                                                      ("labels.csv", ",", "ImagePath,Label\n")])
def test_a_label_table_gives_each_listed_image_its_label(tmp_path, name, delimiter, header):
    for path in ("broccoli.jpg", "pizza.png", "deep/teddy.jpg"):
        touch(tmp_path / path)
    rows = [("broccoli.jpg", "food"), ("pizza.png", "food"), ("deep/teddy.jpg", "toy")]
    (tmp_path / name).write_text(header + "".join(f"{p}{delimiter}{label}\n" for p, label in rows))
    found = scan(str(tmp_path), labels=name)
    assert found.classes == ["food", "toy"]
    assert sorted((path, found.classes[label]) for path, label in found.samples) == sorted(rows)
    assert found.problems == []


def test_every_bad_row_of_a_label_table_is_reported_with_its_line_and_left_out(tmp_path):
    for path in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        touch(tmp_path / path)
    touch(tmp_path.parent / "outside.jpg")
    (tmp_path / "tags.tsv").write_text("\n".join([
        "a.jpg\tcat",         # 1
        "b.jpg\t",            # 2 empty label
        "missing.jpg\tcat",   # 3
        "../outside.jpg\tcat",  # 4
        "tags.tsv\tcat",      # 5 not an image
        "a.jpg\tdog",         # 6 listed again
        "",                   # 7 blank: ignored
        "c.jpg",              # 8 no label column
        "d.jpg\tdog",         # 9
    ]) + "\n")
    found = scan(str(tmp_path), labels="tags.tsv")
    assert found.classes == ["cat", "dog"]
    assert sorted(path for path, _ in found.samples) == ["a.jpg", "d.jpg"]
    assert found.problems == [
        "tags.tsv line 2: no label for 'b.jpg'",
        "tags.tsv line 3: no such file missing.jpg",
        "tags.tsv line 4: ../outside.jpg is not a path inside the data folder",
        "tags.tsv line 5: tags.tsv is not an image file name",
        "tags.tsv line 6: a.jpg is listed again (first on line 1)",
        "tags.tsv line 8: no label for 'c.jpg'",
    ]


def test_label_sources_that_cannot_work_are_one_clear_error(tmp_path):
    touch(tmp_path / "a.jpg")
    with pytest.raises(DatasetError, match=r"--labels takes folder, filename or a \.tsv/\.csv file"):
        scan(str(tmp_path), labels="labels.json")
    with pytest.raises(DatasetError, match="cannot read the label table"):
        scan(str(tmp_path), labels="absent.tsv")
    (tmp_path / "bad.tsv").write_bytes(b"a.jpg\t\xff\xfe\n")
    with pytest.raises(DatasetError, match="is not UTF-8 text"):
        scan(str(tmp_path), labels="bad.tsv")
    (tmp_path / "none.tsv").write_text("a.jpg\t\n")
    with pytest.raises(DatasetError, match=r"no images found .* first problem: none.tsv line 1: no label"):
        scan(str(tmp_path), labels="none.tsv")


def test_the_job_receives_a_label_table_as_its_path_inside_the_data_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    touch(data / "sub" / "tags.tsv", b"")
    touch(tmp_path / "elsewhere.tsv", b"")
    monkeypatch.chdir(tmp_path)
    assert label_source_for_job(str(data), "data/sub/tags.tsv") == "sub/tags.tsv"   # from the working folder
    assert label_source_for_job(str(data), "sub/tags.tsv") == "sub/tags.tsv"        # relative to DATA
    assert label_source_for_job(str(data), str(data / "sub" / "tags.tsv")) == "sub/tags.tsv"
    assert label_source_for_job(str(data), "filename") == "filename"
    with pytest.raises(DatasetError, match="outside the data folder"):
        label_source_for_job(str(data), "elsewhere.tsv")
    with pytest.raises(DatasetError, match="no such file absent.tsv"):
        label_source_for_job(str(data), "absent.tsv")


def test_a_sample_fraction_is_stratified_seeded_and_keeps_what_the_split_needs():
    samples = [(f"a/{i:03}.jpg", 0) for i in range(100)] + [(f"b/{i:03}.jpg", 1) for i in range(10)] + \
              [(f"c/{i}.jpg", 2) for i in range(3)]
    kept = sample_fraction(samples, 0.2, 0, 0.1, 0.1)
    assert collections.Counter(label for _, label in kept) == {0: 20, 1: 3, 2: 3}  # b: round(2) < 3 needed
    assert set(kept) <= set(samples) and kept == sorted(kept)
    assert sample_fraction(list(reversed(samples)), 0.2, 0, 0.1, 0.1) == kept      # input order does not matter
    assert sample_fraction(samples, 0.2, 1, 0.1, 0.1) != kept                      # the seed does
    assert sample_fraction(samples, 1.0, 0, 0.1, 0.1) is samples
