"""`orchestrate report`: one self-contained HTML page about a finished run.

One file with everything inline (plots and thumbnails as PNG data URIs, the style sheet in the
page, no external URL), because a report gets mailed, attached to a ticket or opened on an
air-gapped machine long after the run, and must look the same there. Everything comes from the
run folder -- spec.json, outputs/ (metrics.json, history.jsonl, predictions.csv) and
logs/train.log -- so the report of a run trained on Azure GPUs takes a second on a laptop. Thumbnails
of the misclassified images are read from the dataset folder that spec.json recorded, while it is
still there; when outputs/model.onnx has class activation maps, the model runs on those images
alone (WRONG_SHOWN of them) to draw each one's heat map of the class it wrongly chose.

matplotlib (Agg, a Figure without pyplot, so no global backend state changes) and PIL are
imported when a report is written, never at CLI start.
"""
import base64
import csv
import functools
import html
import io
import os
import re
import time
from pathlib import Path, PurePath

from remote_scripts.atomic import write_atomically
from remote_scripts.metrics import PREDICTION_COLUMNS

from .errors import UsageError
from .printable import printable
from .events import job_seconds
from .run_folder import METRICS, MODEL, PREDICTIONS, RunFolder

WRONG_SHOWN = 24           # the most confidently wrong images shown as thumbnails
THUMBNAIL_PX = 160         # a thumbnail fits in a square of this side
ANNOTATED_CLASSES = 25     # up to this many classes the heat map prints each count in its cell
COUNTS_TABLE_CLASSES = 60  # up to this many classes the confusion matrix is also a table of numbers
SKIPPED_SHOWN = 200        # skipped files listed (metrics.json holds them all)
# The job's own paths inside its container or node: meaningless beside the run folder's.
CONFIG_HIDDEN = frozenset({"data", "output", "checkpoint_dir"})


def write_report(run_dir, path=None):
    """Write the report of the run in `run_dir` to `path` (default: its report.html) and return its path.

    UsageError when the run has no outputs yet (no metrics.json) or they cannot be read.
    """
    run = read_run(Path(run_dir))
    path = Path(path) if path else RunFolder(run_dir).report_path
    write_atomically(path, render_html(run))  # a browser showing the old one reloads a whole page
    return path


# --------------------------------------------------------------------------------------------
# Reading the run folder


def read_run(run_dir):
    """Everything the report shows, as plain data: spec, metrics, history, predictions, log events.

    UsageError naming the file when one of them is damaged (its content is not of the job's shape):
    a report shows what the job wrote, or says which file it could not read."""
    folder = RunFolder(run_dir)
    spec = folder.spec() or {}
    _check_spec(spec, folder.spec_path)
    run_id = spec.get("run_id") or run_dir.name
    metrics = folder.metrics(strict=True)
    if metrics is None:
        raise UsageError(f"run {run_id} has no outputs yet: no {METRICS} in {folder.outputs}")
    _check_metrics(metrics, folder.output(METRICS))
    events = folder.log_events()
    return {"run_id": run_id, "run_dir": run_dir, "spec": spec, "metrics": metrics, "history": folder.history(),
            "predictions": read_predictions(folder.output(PREDICTIONS)),
            "log": {} if events is None else last_attempt(events)}


SPEC_TYPES = {"run_id": str, "data": str, "backend": str, "backend_options": dict, "train_args": list}


def _check_spec(spec, path):
    for key, kind in SPEC_TYPES.items():
        if spec.get(key) is not None and not isinstance(spec[key], kind):
            raise UsageError(f"{path} is damaged: {key} is not a JSON {_JSON_NAMES[kind]}")


_JSON_NAMES = {str: "string", dict: "object", list: "list"}


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_metrics(metrics, path):
    """UsageError naming metrics.json when it lacks what the report draws or has it in another shape."""
    def damaged(what):
        return UsageError(f"{path} is damaged: {what}")

    confusion = metrics.get("confusion_matrix")
    if not isinstance(confusion, dict):
        raise damaged("no confusion_matrix object")
    labels, matrix = confusion.get("labels"), confusion.get("matrix")
    if not (isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)):
        raise damaged("confusion_matrix.labels is not a list of label names")
    if not (isinstance(matrix, list) and len(matrix) == len(labels)
            and all(isinstance(row, list) and len(row) == len(labels) and all(map(_is_count, row)) for row in matrix)):
        raise damaged(f"confusion_matrix.matrix is not {len(labels)} rows of {len(labels)} counts")
    per_class = metrics.get("per_class")
    if not (isinstance(per_class, dict) and all(isinstance(row, dict) for row in per_class.values())):
        raise damaged("per_class is not an object of per-class objects")
    for key, kind in (("per_class_log_loss", dict), ("skipped", list), ("stopped", str), ("evaluated_on", str)):
        if metrics.get(key) is not None and not isinstance(metrics[key], kind):
            raise damaged(f"{key} is not a JSON {_JSON_NAMES[kind]}")
    if not all(isinstance(entry, dict) for entry in metrics.get("skipped") or ()):
        raise damaged("skipped is not a list of objects")


def read_predictions(path):
    """predictions.csv's rows as dicts with float scores; None when the run has none (a job older
    than the file). Paths that are not UTF-8 come back with surrogate escapes, as the job wrote them.
    UsageError naming the file (and line) when a row is short, long or has a score that is no number."""
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != PREDICTION_COLUMNS:
                raise UsageError(f"{path} has the columns {reader.fieldnames}, expected {list(PREDICTION_COLUMNS)}")
            rows = list(reader)
    except FileNotFoundError:
        return None
    except (OSError, csv.Error) as exc:
        raise UsageError(f"{path} is unreadable: {exc}") from None
    for number, row in enumerate(rows, 2):  # line 1 is the header
        if None in row or None in row.values():
            raise UsageError(f"{path} is damaged: line {number} does not have the {len(PREDICTION_COLUMNS)} columns "
                            f"{', '.join(PREDICTION_COLUMNS)}")
        try:
            row["score"], row["true_label_score"] = float(row["score"]), float(row["true_label_score"])
        except ValueError:
            raise UsageError(f"{path} is damaged: line {number} has a score that is not a number") from None
    return rows


def last_attempt(events):
    """The last attempt's events of the job's log (a resumed run's log holds every attempt, each
    beginning with its scan phase): run_start, run_end, the phases with their start times; how
    many attempts there were, and the seconds of them all (events.job_seconds)."""
    found = {"attempts": 0, "phases": [], "seconds": job_seconds(events)}
    for event in events:
        kind = event.get("type")
        if kind == "phase":
            if event.get("name") == "scan":
                found.update(attempts=found["attempts"] + 1, phases=[])
                found.pop("run_end", None)
            found["phases"].append((event.get("name"), event.get("time")))
        elif kind in ("run_start", "run_end"):
            found[kind] = event
    return found


# --------------------------------------------------------------------------------------------
# Plots and thumbnails: PNG bytes -> data URIs


def png_data_uri(png):
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _without_math_text(draw):
    """Run a drawing function with matplotlib's math text off. Labels are the user's folder names,
    and matplotlib would read a label such as `$\\x$` or `a$^$b` as TeX (and fail on it): every
    text is drawn as the characters it holds."""
    @functools.wraps(draw)
    def plain(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return plain


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


@_without_math_text
def learning_curves_png(history):
    """Loss and accuracy per epoch, training and validation side by side; the kept epoch marked."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(10, 3.6)
    epochs = [row["epoch"] for row in history]
    best = [row["epoch"] for row in history if row.get("best")]
    marker = "o" if len(epochs) <= 30 else None
    for axes, key, title in zip(figure.subplots(1, 2), ("loss", "accuracy"), ("Loss", "Accuracy")):
        for split, colour in (("train", "#1f77b4"), ("val", "#ff7f0e")):
            points = [(row["epoch"], row[f"{split}_{key}"]) for row in history
                      if _real(row.get(f"{split}_{key}"))]
            if points:
                axes.plot(*zip(*points), marker=marker, color=colour,
                          label="training" if split == "train" else "validation")
        if best:
            axes.axvline(best[-1], color="#2ca02c", linestyle="--", linewidth=1, label=f"kept (epoch {best[-1]})")
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    return _png(figure)


@_without_math_text
def confusion_png(labels, matrix):
    """The confusion matrix as a heat map: colour is the share of the true class (so small classes
    show their mistakes as clearly as large ones), the cell's count is printed in it."""
    import numpy as np

    counts = np.asarray(matrix, dtype=np.int64)
    k = len(labels)
    support = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    side = min(max(4.5, 0.45 * k + 2.5), 14)
    figure = _figure(side + 1.2, side)
    axes = figure.subplots()
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    font = 9 if k <= 10 else 7 if k <= 40 else 5
    labels = [printable(label) for label in labels]  # a control character is no glyph: shown escaped
    axes.set_xticks(range(k), labels, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center", fontsize=font)
    axes.set_yticks(range(k), labels, fontsize=font)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if k <= ANNOTATED_CLASSES:
        for (i, j), count in np.ndenumerate(counts):
            axes.text(j, i, str(count), ha="center", va="center", fontsize=font + 1,
                      color="white" if share[i, j] > 0.5 else "black")
    return _png(figure)


def thumbnail_png(path):
    """A PNG thumbnail of the image at `path`, a file name or object (the job's decoding: any mode, alpha on white), or
    None when the file is gone or unreadable. A large image is scaled down smoothly; a tiny one
    (digits, 32 px tiles) is enlarged by a whole factor with its pixels kept sharp, so that it
    can be seen at all."""
    from remote_scripts import imaging

    try:
        image = thumbnail_image(imaging.load_rgb(path))
    except imaging.DECODE_ERRORS:  # OSError covers a file that is gone
        return None
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def overlay_png(classifier, path):
    """thumbnail_png's thumbnail with the heat map (class activation map) of the class `classifier`
    predicts for the image over it, or None when the file is gone or unreadable."""
    from remote_scripts import imaging

    from .inference.classifier import ImageRejected, overlay, png_bytes

    try:
        data = path.read() if hasattr(path, "read") else Path(path).read_bytes()
        _, heat, _ = classifier.explain_one((None, data))
        return png_bytes(overlay(thumbnail_image(imaging.load_rgb(io.BytesIO(data))), heat))
    except (OSError, ImageRejected, *imaging.DECODE_ERRORS):
        return None


def thumbnail_image(image):
    """The PIL image fit into a THUMBNAIL_PX square (see thumbnail_png)."""
    from PIL import Image

    factor = THUMBNAIL_PX // max(image.size)
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    else:
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.LANCZOS)
    return image


URI = re.compile(r"^[a-z][a-z0-9+.-]*:/", re.IGNORECASE)  # az://..., https://... (a Windows drive has no slash)


def inside(root, relpath):
    """Whether the predictions.csv path `relpath` stays inside the dataset folder `root`: relative,
    no `..` part, and no link on the way that leads out (as the scan leaves such links out). The
    file is the job's output, not to be trusted with the whole machine: another path would put any
    image of this machine into a page that gets mailed around."""
    path = PurePath(relpath)
    if not relpath or path.is_absolute() or path.drive or ".." in path.parts:
        return False
    base = os.path.realpath(root)
    return os.path.realpath(os.path.join(base, relpath)).startswith(os.path.join(base, ""))


def thumbnails(data, relpaths, make=thumbnail_png):
    """({relative path: thumbnail PNG, or None when unreadable or outside the dataset}, None), or
    ({}, why none can be read) when the dataset is not on this machine. A loose folder is read
    file by file, a packed dataset (remote_scripts/packed_dataset.py) from its shards. `make`
    turns a file's path or file object into its PNG."""
    from remote_scripts import folder_dataset, packed_dataset

    if not data:
        return {}, "spec.json names no dataset folder"
    if URI.match(data):
        return {}, f"the dataset {data} is in the cloud, not on this machine"
    root = Path(data)
    if not root.is_dir():
        return {}, f"the dataset folder {root} is no longer on disk"
    if not packed_dataset.is_packed(root):
        return {path: make(root / path) if inside(root, path) else None for path in relpaths}, None
    try:
        packed = packed_dataset.PackedDataset(str(root))
    except folder_dataset.DatasetError as exc:  # its shards are gone
        return {}, str(exc)
    try:
        return {path: make(packed.open(path)) if path in packed.by_path else None for path in relpaths}, None
    finally:
        packed.close()


# --------------------------------------------------------------------------------------------
# The page

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2430;
       margin: 0; background: #f5f6f8; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; word-break: break-all; }
h2 { font-size: 17px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #e3e6ea; }
.sub { color: #5b6573; margin: 0 0 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #e3e6ea; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.card b { display: block; font-size: 20px; }
.card span { color: #5b6573; font-size: 12px; }
img.plot { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #eceef1; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; }
.note { color: #5b6573; background: #f5f6f8; border-left: 3px solid #c4c9d0; padding: 6px 10px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, 174px); gap: 12px; }
figure.wrong { margin: 0; border: 1px solid #e3e6ea; border-radius: 6px; padding: 6px; }
figure.wrong img, figure.wrong .missing { width: 160px; height: 160px; background: #f0f1f3; }
figure.wrong img.cam { margin-top: 4px; }
figure.wrong img { object-fit: contain; display: block; }
figure.wrong .missing { display: flex; align-items: center; justify-content: center; color: #8a929c;
       font-size: 12px; }
figcaption { font-size: 12px; margin-top: 4px; }
figcaption .labels { font-size: 13px; }
figcaption code { overflow-wrap: anywhere; }
.bad { color: #b3261e; font-weight: 600; }
.good { color: #1b7f3b; font-weight: 600; }
details summary { cursor: pointer; color: #3b5bdb; margin: 8px 0; }
code { font-size: 12px; }
"""


def render_html(run):
    """The whole page: header, learning curves, confusion matrix, per-class table, confidently
    wrong images, skipped files, configuration, timing."""
    metrics = run["metrics"]
    sections = [
        _header(run),
        _section("curves", "Learning curves", _learning_curves(run["history"])),
        _section("confusion", "Confusion matrix", _confusion(metrics)),
        _section("classes", "Per-class precision, recall and F1", _per_class(metrics)),
        _section("wrong", "Most confidently wrong", _confidently_wrong(run)),
        _section("skipped-files", "Skipped files", _skipped(metrics.get("skipped") or [])),
        _section("config", "Configuration", _configuration(run)),
        _section("time", "Timing", _timing(run)),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>Report: {_e(run['run_id'])}</title><style>{STYLE}</style></head>\n"
            "<body><main>\n" + "\n".join(sections) + "\n</main></body></html>\n")


def _e(value):
    return html.escape(str(value))


def _section(section_id, title, body):
    return f'<section id="{section_id}"><h2>{_e(title)}</h2>\n{body}</section>'


def _table(headers, rows, table_id, numeric_from=1):
    """An HTML table; columns from `numeric_from` on are right-aligned numbers."""
    head = "".join(f'<th{" class=num" if i >= numeric_from else ""}>{_e(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i >= numeric_from else ""}>{_e(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>\n" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>'


def _real(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value, digits=4):
    return f"{value:.{digits}f}" if _real(value) else "-"


def _header(run):
    metrics, spec, log = run["metrics"], run["spec"], run["log"]
    evaluated = metrics.get("evaluated_on", "test")
    cards = [(_number(metrics.get(key)), name) for key, name in (
        ("accuracy", "accuracy"), ("macro_accuracy", "macro accuracy"), ("macro_f1", "macro F1"),
        ("log_loss", "log-loss"), ("log_loss_reduction", "log-loss reduction"))]
    cards.append((str(metrics.get("num_samples", "?")), f"{evaluated} images"))
    card_html = "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(n)}</span></div>' for v, n in cards)
    epochs = (f"best epoch {metrics.get('best_epoch', '?')} of {metrics.get('epochs_completed', '?')} completed"
              + (f" ({metrics['stopped'].replace('_', ' ')})" if metrics.get("stopped") not in (None, "completed") else ""))
    facts = [f"{metrics.get('arch', '?')} ({metrics.get('mode', '?')})", epochs,
             f"{spec.get('backend', '?')} backend"]
    if log.get("run_end"):
        facts.append(f"job {log['run_end'].get('status')}")
    note = ("" if evaluated == "test" else
            f'<p class="note">This run had no test split: these numbers are measured on the {_e(evaluated)} split.</p>')
    return (f"<h1>Run {_e(run['run_id'])}</h1>\n<p class=\"sub\">{_e(' · '.join(facts))}<br>dataset "
            f"<code>{_e(spec.get('data', '?'))}</code></p>\n<div class=\"cards\">{card_html}</div>{note}")


def _learning_curves(history):
    if not history:
        return '<p class="note">No epochs were recorded (outputs/history.jsonl is missing or empty).</p>'
    rows = [(row["epoch"], _number(row.get("train_loss")), _number(row.get("train_accuracy")),
             _number(row.get("val_loss")), _number(row.get("val_accuracy")), _number(row.get("seconds"), 1),
             "kept" if row.get("best") else "") for row in history]
    table = _table(("epoch", "train loss", "train accuracy", "val loss", "val accuracy", "seconds", ""), rows,
                   "epochs")
    return (f'<img class="plot" alt="learning curves" src="{png_data_uri(learning_curves_png(history))}">\n'
            f"<details><summary>Every epoch's numbers</summary>{table}</details>")


def _confusion(metrics):
    labels, matrix = metrics["confusion_matrix"]["labels"], metrics["confusion_matrix"]["matrix"]
    body = (f'<img class="plot" alt="confusion matrix" src="{png_data_uri(confusion_png(labels, matrix))}">\n'
            "<p class=\"sub\">Rows: true label; columns: predicted label.</p>")
    if len(labels) <= COUNTS_TABLE_CLASSES:
        rows = [[label, *row] for label, row in zip(labels, matrix)]
        body += ("<details><summary>The counts as a table</summary>"
                 + _table(("true \\ predicted", *labels), rows, "confusion-matrix") + "</details>")
    return body


def _per_class(metrics):
    losses = metrics.get("per_class_log_loss") or {}
    rows = [(label, _number(row.get("precision"), 3), _number(row.get("recall"), 3), _number(row.get("f1"), 3),
             row.get("support", "-"), _number(losses.get(label), 3)) for label, row in metrics["per_class"].items()]
    return _table(("class", "precision", "recall", "F1", "support", "log-loss"), rows, "per-class")


def _confidently_wrong(run):
    predictions = run["predictions"]
    if predictions is None:
        return ('<p class="note">This run has no outputs/predictions.csv (its job predates per-image '
                "predictions): no images to show.</p>")
    wrong = sorted((r for r in predictions if r["predicted_label"] != r["true_label"]),
                   key=lambda r: r["score"], reverse=True)
    if not wrong:
        return f'<p class="note">None of the {len(predictions)} evaluated images was misclassified.</p>'
    shown = wrong[:WRONG_SHOWN]
    pngs, why_not = thumbnails(run["spec"].get("data"), [row["path"] for row in shown])
    heat_maps = heat_map_thumbnails(run, [row["path"] for row in shown]) if pngs else {}
    note = (f"{len(wrong)} of {len(predictions)} evaluated images are misclassified; "
            f"the {len(shown)} the model was surest about:")
    if why_not:
        note += f" {why_not}, so the images cannot be shown"
    cards = []
    for row in shown:
        png = pngs.get(row["path"])
        picture = (f'<img class="thumb" alt="{_e(row["path"])}" src="{png_data_uri(png)}">' if png else
                   '<div class="missing">image not on disk</div>')
        if heat_maps.get(row["path"]):
            picture += (f'<img class="cam" alt="heat map of {_e(row["predicted_label"])} over {_e(row["path"])}" '
                        f'title="what made the model say {_e(row["predicted_label"])}" '
                        f'src="{png_data_uri(heat_maps[row["path"]])}">')
        cards.append(
            f'<figure class="wrong" data-path="{_e(row["path"])}">{picture}<figcaption><span class="labels">'
            f'<span class="good">{_e(row["true_label"])}</span> &rarr; <span class="bad">'
            f'{_e(row["predicted_label"])}</span></span><br>score {row["score"]:.3f}, p(true) '
            f'{row["true_label_score"]:.3f}<br><code>{_e(row["path"])}</code></figcaption></figure>')
    return f'<p class="sub">{_e(note)}</p>\n<div class="grid">' + "\n".join(cards) + "</div>"


def heat_map_thumbnails(run, relpaths):
    """{relative path: overlay_png} by the run's model.onnx, or {} when it has no class activation
    maps (a MobileNetV3, a model made before maps existed) or cannot be loaded."""
    from .inference.classifier import OnnxClassifier

    model = RunFolder(run["run_dir"]).output(MODEL)
    if not model.is_file():
        return {}
    try:
        classifier = OnnxClassifier(model)
    except (UsageError, ImportError):
        return {}
    if not classifier.has_cam:
        return {}
    return thumbnails(run["spec"].get("data"), relpaths, make=functools.partial(overlay_png, classifier))[0]


def _skipped(skipped):
    if not skipped:
        return '<p class="note">No file was skipped: every image decoded.</p>'
    shown = skipped[:SKIPPED_SHOWN]
    more = (f" (the first {SKIPPED_SHOWN} listed; metrics.json lists them all)" if len(skipped) > SKIPPED_SHOWN
            else "")
    return (f'<p class="sub">{len(skipped)} file(s) could not be decoded and were left out{more}.</p>'
            + _table(("path", "reason"), [(s.get("path"), s.get("reason")) for s in shown], "skipped",
                     numeric_from=2))


def _configuration(run):
    spec, start = run["spec"], run["log"].get("run_start") or {}
    if not isinstance(start.get("config") or {}, dict) or not isinstance(start.get("split") or {}, dict):
        start = {}  # a damaged event: the spec's arguments below instead
    rows = [("dataset", spec.get("data", "?")), ("backend", spec.get("backend", "?"))]
    rows += [(f"backend: {key}", value) for key, value in sorted((spec.get("backend_options") or {}).items())]
    if start:
        rows.append(("device", start.get("device", "?")))
        split = start.get("split") or {}
        rows.append(("split (train / val / test)", " / ".join(str(split.get(k, "?")) for k in ("train", "val", "test"))))
        rows += [(key, "-" if value is None else value) for key, value in sorted((start.get("config") or {}).items())
                 if key not in CONFIG_HIDDEN]
    else:
        rows.append(("train.py arguments", " ".join(map(str, spec.get("train_args") or [])) or "(defaults)"))
    return _table(("setting", "value"), rows, "configuration", numeric_from=2)


def _timing(run):
    log, history = run["log"], run["history"]
    rows = []
    phases = log.get("phases") or []
    if phases and _real(phases[0][1]):
        rows.append(("started", time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(phases[0][1]))))
    end = log.get("run_end") or {}
    if log.get("seconds") is not None:  # events.job_seconds, as `runs compare` shows it
        attempts = log.get("attempts", 0)
        rows.append(("job, start to end" if attempts <= 1 else f"job, its {attempts} attempts together",
                     f"{log['seconds']:.1f} s"))
    if log.get("attempts", 0) > 1:
        rows.append(("attempts", f"{log['attempts']} (the times below are the last one's)"))
    ends = [when for _, when in phases[1:]] + [end.get("time")]
    for (name, began), ended in zip(phases, ends):
        if isinstance(began, (int, float)) and isinstance(ended, (int, float)):
            rows.append((f"phase {name}", f"{ended - began:.1f} s"))
    seconds = [row["seconds"] for row in history if _real(row.get("seconds"))]
    if seconds:
        rows.append(("epochs", f"{len(seconds)}, {sum(seconds):.1f} s in all, {sum(seconds) / len(seconds):.2f} s each"))
    if not log:
        rows.append(("job log", "not in the run folder (an Azure ML run's log stays in the workspace)"))
    return _table(("", ""), rows, "timing", numeric_from=2)
