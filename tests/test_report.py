"""`orchestrate report` and the job's predictions.csv, on a real run.

One real training run (the CLI, local backend, a tiny generated dataset with a corrupt image and
a few mislabeled ones, so that skipped files and confident mistakes exist), then the report:
the HTML parsed, each inline image decoded, its tables compared with metrics.json and
predictions.csv, and the page rendered in Debian's chromium (a screenshot in test-artifacts/).
"""
import base64
import csv
import io
import json
import os
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from conftest import CHROMIUM, CHROMIUM_ARGS, REPO, run_cli
from imagegen import make_dataset

FAST = ["--backend", "local", "--arch", "resnet18", "--weights", "none", "--image-size", "32", "--mode", "linear",
        "--epochs", "4", "--batch-size", "16", "--workers", "0", "--test-fraction", "0.3"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A completed run: red images filed under blue are the confident mistakes the report shows."""
    home = tmp_path_factory.mktemp("home")
    env = {"XDG_STATE_HOME": str(home / "state"), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache")}
    data = make_dataset(home / "data", per_class=16, corrupt=1)
    for image in sorted((data / "red").glob("red_*.png"))[:5]:
        image.rename(data / "blue" / f"mislabeled_{image.name}")
    result = run_cli("train", data, *FAST, "--runs-dir", home / "runs", "--json", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    out = Path(summary["run_dir"]) / "outputs"
    with open(out / "predictions.csv", newline="") as f:
        predictions = list(csv.DictReader(f))
    return {"env": env, "data": data, "summary": summary, "run_dir": Path(summary["run_dir"]),
            "metrics": json.loads((out / "metrics.json").read_text()), "predictions": predictions}


class Page(HTMLParser):
    """What the tests look at in a report: images, tables by id, the mistakes' figures, links."""

    def __init__(self, text):
        super().__init__()
        self.images, self.tables, self.figures, self.urls = [], {}, {}, []
        self._rows = self._cells = self._text = self._figure = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self._rows = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._rows is not None:
            self._cells = []
            self._rows.append(self._cells)
        elif tag in ("td", "th") and self._cells is not None:
            self._text = []
        elif tag == "figure" and "data-path" in attrs:
            self._figure = attrs["data-path"]
            self.figures[self._figure] = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._text is not None:
            self._cells.append("".join(self._text).strip())
            self._text = None
        elif tag == "table":
            self._rows = None
        elif tag == "figure":
            self._figure = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)
        if self._figure is not None:
            self.figures[self._figure].append(data)


def decode_png(uri):
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):])))
    assert image.format == "PNG"
    image.load()
    return image


def report_page(trained):
    return Page((trained["run_dir"] / "report.html").read_text())


def test_train_writes_the_report_and_its_summary_names_it(trained, cli):
    report = trained["run_dir"] / "report.html"
    assert trained["summary"]["report"] == str(report) and report.is_file()
    assert set(trained["summary"]["outputs"]) >= {"predictions.csv", "metrics.json", "history.jsonl"}
    logs = cli("logs", trained["summary"]["run_id"], env=trained["env"])  # the same summary, re-rendered
    assert logs.returncode == 0 and f"report: {report}" in logs.stdout.splitlines()


def test_predictions_csv_has_a_row_per_test_image_agreeing_with_the_confusion_matrix(trained):
    metrics, rows = trained["metrics"], trained["predictions"]
    assert len(rows) == metrics["split"]["test"] == metrics["num_samples"]
    labels = metrics["confusion_matrix"]["labels"]
    counted = [[0] * len(labels) for _ in labels]
    for row in rows:
        assert (trained["data"] / row["path"]).is_file() and 0 <= float(row["score"]) <= 1
        counted[labels.index(row["true_label"])][labels.index(row["predicted_label"])] += 1
    assert counted == metrics["confusion_matrix"]["matrix"]


def test_report_command_writes_one_self_contained_page_with_its_plots_and_thumbnails(trained, cli):
    run_id = trained["summary"]["run_id"]
    result = cli("report", run_id[:14], env=trained["env"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(trained["run_dir"] / "report.html")
    page = report_page(trained)
    assert all(url.startswith("data:image/png;base64,") for url in page.urls), "no external or file URL"
    plots = [decode_png(img["src"]) for img in page.images if img.get("class") == "plot"]
    assert len(plots) == 2 and all(p.width > 200 and p.height > 150 for p in plots)  # curves, confusion
    thumbnails = [decode_png(img["src"]) for img in page.images if img.get("class") == "thumb"]
    assert thumbnails and all(0 < t.width <= 160 and 0 < t.height <= 160 for t in thumbnails)
    assert len(thumbnails) == len(page.figures)


def test_confusion_and_per_class_tables_agree_with_metrics_json(trained):
    metrics, page = trained["metrics"], report_page(trained)
    labels = metrics["confusion_matrix"]["labels"]
    header, *rows = page.tables["confusion-matrix"]
    assert header[1:] == labels
    assert [row[0] for row in rows] == labels
    assert [[int(c) for c in row[1:]] for row in rows] == metrics["confusion_matrix"]["matrix"]
    header, *rows = page.tables["per-class"]
    assert header[:5] == ["class", "precision", "recall", "F1", "support"]
    for label, precision, recall, f1, support, _ in rows:
        expected = metrics["per_class"][label]
        assert (float(precision), float(recall), float(f1)) == pytest.approx(
            (expected["precision"], expected["recall"], expected["f1"]), abs=5e-4)
        assert int(support) == expected["support"]
    assert [row[0] for row in rows] == labels


def test_confidently_wrong_shows_the_surest_mistakes_of_predictions_csv(trained):
    wrong = sorted((r for r in trained["predictions"] if r["predicted_label"] != r["true_label"]),
                   key=lambda r: float(r["score"]), reverse=True)
    assert any("mislabeled_red" in r["path"] for r in wrong), "the mislabeled images should be mistakes"
    figures = report_page(trained).figures
    assert list(figures) == [r["path"] for r in wrong[:24]]
    for row in wrong[:24]:
        caption = "".join(figures[row["path"]])
        assert row["true_label"] in caption and row["predicted_label"] in caption
        assert f"score {float(row['score']):.3f}" in caption


def test_skipped_configuration_and_timing_are_listed(trained):
    page = report_page(trained)
    (skipped_path, reason), = page.tables["skipped"][1:]
    assert (skipped_path, reason) == (trained["metrics"]["skipped"][0]["path"], trained["metrics"]["skipped"][0]["reason"])
    settings = dict(page.tables["configuration"][1:])
    assert settings["arch"] == "resnet18" and settings["epochs"] == "4" and settings["mode"] == "linear"
    assert settings["dataset"] == str(trained["data"].resolve())
    timing = dict(page.tables["timing"][1:])
    assert "job, start to end" in timing and "phase train" in timing and timing["epochs"].startswith("4,")
    assert len(page.tables["epochs"]) == 1 + 4


def test_a_run_whose_images_are_gone_still_gets_its_report_saying_so(trained, cli, tmp_path):
    copy = tmp_path / "copied-run"
    shutil.copytree(trained["run_dir"], copy)
    spec = json.loads((copy / "spec.json").read_text())
    (copy / "spec.json").write_text(json.dumps({**spec, "data": str(tmp_path / "deleted")}))
    result = cli("report", copy / "outputs", env=trained["env"])  # the outputs folder names its run too
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(copy / "report.html")
    text = (copy / "report.html").read_text()
    page = Page(text)
    assert "is no longer on disk" in text and page.figures
    assert not [img for img in page.images if img.get("class") == "thumb"]
    assert text.count("image not on disk") == len(page.figures)


def test_thumbnails_of_a_packed_dataset_come_from_its_shards(trained, cli, tmp_path):
    packed = tmp_path / "packed"
    result = cli("data", "pack", trained["data"], "--out", packed, env=trained["env"])
    assert result.returncode == 0, result.stderr
    copy = tmp_path / "run-on-packed"
    shutil.copytree(trained["run_dir"], copy)
    spec = json.loads((copy / "spec.json").read_text())
    (copy / "spec.json").write_text(json.dumps({**spec, "data": str(packed)}))
    assert cli("report", copy, env=trained["env"]).returncode == 0
    page = Page((copy / "report.html").read_text())
    originals = [decode_png(img["src"]) for img in report_page(trained).images if img.get("class") == "thumb"]
    from_shards = [decode_png(img["src"]) for img in page.images if img.get("class") == "thumb"]
    assert len(from_shards) == len(page.figures) and [t.tobytes() for t in from_shards] == [t.tobytes() for t in originals]


def test_a_run_without_outputs_or_an_unknown_run_is_one_line_exit_2(cli, tmp_path):
    run_dir = tmp_path / "runs" / "fresh-run"
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text(json.dumps({"run_id": "fresh-run", "data": "/x", "backend": "local"}))
    result = cli("report", run_dir)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: run fresh-run has no outputs yet")
    unknown = cli("report", "no-such-run")
    assert unknown.returncode == 2 and "unknown run 'no-such-run'" in unknown.stderr


def test_open_hands_the_report_to_the_web_browser(trained, cli, tmp_path):
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    result = cli("report", trained["summary"]["run_id"], "--open", env={**trained["env"], "BROWSER": str(browser)})
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 10
    while not (opened.is_file() and opened.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert opened.read_text().strip() == (trained["run_dir"] / "report.html").as_uri()


def test_the_report_renders_in_a_real_browser(trained):
    """Every image decodes in chromium, the page asks for nothing but itself; the screenshot is
    test-artifacts/report.png, for a person to look at."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import sync_playwright

    report = trained["run_dir"] / "report.html"
    shot = REPO / "test-artifacts" / "report.png"
    shot.parent.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requested = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(report.as_uri())
            broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || !i.naturalWidth).length")
            shown = page.evaluate("document.images.length")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shown >= 3 and broken == 0
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    assert shot.stat().st_size > 10_000


# --------------------------------------------------------------------------------------------
# Damaged run folders: one line naming the file, exit 2 -- never a traceback


def _edit_json(name, change):
    def corrupt(run_dir):
        path = run_dir / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return corrupt


def _write(name, text):
    def corrupt(run_dir):
        (run_dir / name).write_text(text)
    return corrupt


def _edit_lines(name, change):
    """change(lines) -> lines, for the text file `name` (a CSV's header is line 0)."""
    def corrupt(run_dir):
        path = run_dir / name
        path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")
    return corrupt


def _without(key):
    return lambda data: {k: v for k, v in data.items() if k != key}


def _replace_cell(column, value):
    def change(lines):
        header = lines[0].split(",")
        cells = lines[1].split(",")
        cells[header.index(column)] = value
        return [lines[0], ",".join(cells), *lines[2:]]
    return change


DAMAGE = {
    "metrics-a-list": ("outputs/metrics.json", _write("outputs/metrics.json", "[]")),
    "metrics-not-json": ("outputs/metrics.json", _write("outputs/metrics.json", "{\"accuracy\": ")),
    "metrics-no-confusion-matrix": ("outputs/metrics.json", _edit_json("outputs/metrics.json", _without("confusion_matrix"))),
    "metrics-short-matrix-row": ("outputs/metrics.json", _edit_json("outputs/metrics.json", lambda m: {
        **m, "confusion_matrix": {**m["confusion_matrix"], "matrix": [row[:-1] for row in m["confusion_matrix"]["matrix"]]}})),
    "metrics-per-class-a-list": ("outputs/metrics.json", _edit_json("outputs/metrics.json", lambda m: {**m, "per_class": []})),
    "metrics-skipped-strings": ("outputs/metrics.json", _edit_json("outputs/metrics.json", lambda m: {**m, "skipped": ["x"]})),
    "spec-a-list": ("spec.json", _write("spec.json", "[]")),
    "spec-data-a-number": ("spec.json", _edit_json("spec.json", lambda s: {**s, "data": 5})),
    "predictions-score-not-a-number": ("outputs/predictions.csv",
                                       _edit_lines("outputs/predictions.csv", _replace_cell("score", "high"))),
    "predictions-short-row": ("outputs/predictions.csv",
                              _edit_lines("outputs/predictions.csv", lambda lines: [*lines, "only,three,cells"])),
    "predictions-long-row": ("outputs/predictions.csv",
                             _edit_lines("outputs/predictions.csv", lambda lines: [*lines, lines[1] + ",extra"])),
    "history-row-without-epoch": ("outputs/history.jsonl",
                                  _edit_lines("outputs/history.jsonl", lambda lines: [*lines, '{"train_loss": 0.5}'])),
    "history-a-list-line": ("outputs/history.jsonl", _edit_lines("outputs/history.jsonl", lambda lines: [*lines, "[1, 2]"])),
    "history-not-json": ("outputs/history.jsonl", _edit_lines("outputs/history.jsonl", lambda lines: [*lines, "{epoch"])),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_run_file_is_one_line_naming_it_and_exit_2(trained, cli, tmp_path, damage):
    name, corrupt = DAMAGE[damage]
    copy = tmp_path / "damaged-run"
    shutil.copytree(trained["run_dir"], copy)
    corrupt(copy)
    result = cli("report", copy, env=trained["env"])
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and str(copy / name) in result.stderr, result.stderr
    assert not (copy / "report.html").exists() or (copy / "report.html").read_bytes() == \
        (trained["run_dir"] / "report.html").read_bytes()


def test_a_damaged_report_after_a_completed_job_is_a_warning_not_a_traceback(trained, tmp_path, capsys, monkeypatch):
    """train's summary writes the report best-effort: whatever fails there, the completed run is
    still reported (one warning line; the summary names `orchestrate report RUN` instead)."""
    from orchestrator import report
    from orchestrator.cli.common import completed_run_report
    from orchestrator.ledger import RunRecord
    from orchestrator.run import Run

    copy = tmp_path / "run"
    shutil.copytree(trained["run_dir"], copy)
    (copy / "report.html").unlink()
    run = Run(RunRecord(run_id="r", name="r", backend="local", status="completed", dataset="d", run_dir=str(copy)))
    (copy / "outputs" / "metrics.json").write_text("[]")
    assert completed_run_report(run, write=True) is None
    err = capsys.readouterr().err
    assert err.startswith("warning: no report: ") and err.count("\n") == 1 and "metrics.json" in err

    def broken(run_dir, path=None):
        raise KeyError("confusion_matrix")

    monkeypatch.setattr(report, "write_report", broken)  # a failure the checks did not foresee
    assert completed_run_report(run, write=True) is None
    err = capsys.readouterr().err
    assert err == "warning: no report: KeyError: 'confusion_matrix'\n"
    assert not (copy / "report.html").exists()


# --------------------------------------------------------------------------------------------
# Thumbnails only from inside the dataset


def test_prediction_paths_outside_the_dataset_are_not_read(trained, cli, tmp_path):
    """An absolute or ../ path in predictions.csv would put any image of the machine into the page."""
    secret = tmp_path / "secret.png"
    Image.new("RGB", (20, 20), (250, 10, 10)).save(secret)
    beside = trained["data"].parent / "beside-the-dataset.png"
    Image.new("RGB", (20, 20), (10, 250, 10)).save(beside)
    copy = tmp_path / "run"
    shutil.copytree(trained["run_dir"], copy)
    with open(copy / "outputs" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    wrong = sorted((r for r in rows if r["predicted_label"] != r["true_label"]),
                   key=lambda r: float(r["score"]), reverse=True)
    link = trained["data"] / "red" / "a-link-out.png"  # inside by name, outside by its target
    link.symlink_to(secret)
    escaping = {wrong[0]["path"]: str(secret), wrong[1]["path"]: "../beside-the-dataset.png",
                wrong[2]["path"]: "red/a-link-out.png"}
    for row in rows:
        row["path"] = escaping.get(row["path"], row["path"])
    with open(copy / "outputs" / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert cli("report", copy, env=trained["env"]).returncode == 0
    page = Page((copy / "report.html").read_text())
    for path in escaping.values():
        assert "image not on disk" in "".join(page.figures[path])
    thumbs = [img for img in page.images if img.get("class") == "thumb"]
    assert len(thumbs) == len(page.figures) - len(escaping)
    assert all(img["alt"] not in escaping.values() for img in thumbs)
    beside.unlink()
    link.unlink()


def test_a_dataset_in_the_cloud_is_said_to_be_there(trained, cli, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained["run_dir"], copy)
    spec = json.loads((copy / "spec.json").read_text())
    (copy / "spec.json").write_text(json.dumps({**spec, "data": "az://account1/datasets/eurosat"}))
    assert cli("report", copy, env=trained["env"]).returncode == 0
    text = (copy / "report.html").read_text()
    assert "the dataset az://account1/datasets/eurosat is in the cloud, not on this machine" in text
    assert "no longer on disk" not in text


# --------------------------------------------------------------------------------------------
# The job's seconds: one definition, for the report and `runs compare`


def test_a_resumed_runs_seconds_are_every_attempt_together_as_runs_compare_counts_them(trained, tmp_path):
    from orchestrator.compare import compare
    from orchestrator.events import PREFIX
    from orchestrator.ledger import RunRecord
    from orchestrator.report import read_run, render_html
    from orchestrator.events import job_seconds
    from orchestrator.run_folder import RunFolder

    copy = tmp_path / "run"
    shutil.copytree(trained["run_dir"], copy)
    first = job_seconds(RunFolder(copy).log_events())
    assert first > 0
    with open(copy / "logs" / "train.log", "a") as log:  # a second attempt, 7.5 s long
        for event in ({"type": "phase", "name": "scan", "time": 1e9}, {"type": "phase", "name": "train", "time": 1e9 + 1},
                      {"type": "run_end", "status": "completed", "seconds": 7.5, "time": 1e9 + 7.5}):
            log.write(PREFIX + json.dumps({"v": 1, **event}) + "\n")
    assert job_seconds(RunFolder(copy).log_events()) == pytest.approx(first + 7.5)
    timing = dict(Page(render_html(read_run(copy))).tables["timing"][1:])
    assert timing["job, its 2 attempts together"] == f"{first + 7.5:.1f} s"
    assert timing["phase train"] == "6.5 s" and timing["attempts"].startswith("2 ")
    records = [RunRecord(run_id=name, name=name, backend="local", status="completed", dataset="d", run_dir=str(folder))
               for name, folder in (("resumed", copy), ("original", trained["run_dir"]))]
    seconds = compare(records)["metrics"]["seconds"]["values"]
    assert seconds == {"resumed": pytest.approx(first + 7.5), "original": pytest.approx(first)}
