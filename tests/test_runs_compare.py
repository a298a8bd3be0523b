"""`orchestrate runs compare` on three real runs that differ in their learning rate.

The runs are trained by the real CLI (local backend, tiny generated dataset), and compare runs as
a subprocess with piped output, as in a CI log; the marks are checked against the runs' own
metrics.json and history.jsonl.
"""
import json

import pytest

from conftest import run_cli
from imagegen import make_dataset
from orchestrator.ledger import Ledger, RunRecord

LEARNING_RATES = ("0.1", "0.01", "0.001")
FAST = ["--backend", "local", "--arch", "resnet18", "--weights", "none", "--image-size", "32", "--mode", "linear",
        "--epochs", "2", "--batch-size", "16", "--workers", "0"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    # COLUMNS=80: what rich assumes off a terminal anyway; set, so a terminal on the test's own
    # stdin cannot widen the output and hide a wrapped line.
    env = {"XDG_STATE_HOME": str(home / "state"), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache"), "COLUMNS": "80"}
    data = make_dataset(home / "data", per_class=12)
    trained = []
    for lr in LEARNING_RATES:
        result = run_cli("train", data, *FAST, "--lr", lr, "--runs-dir", home / "runs", "--json", env=env)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        outputs = summary["outputs"]
        trained.append({"run_id": summary["run_id"], "lr": float(lr), "stderr": result.stderr,
                        "metrics": json.load(open(outputs["metrics.json"])),
                        "history": [json.loads(line) for line in open(outputs["history.jsonl"])]})
    return {"env": env, "home": home, "runs": trained}


def ids_of(three_runs):
    return [run["run_id"] for run in three_runs["runs"]]


def best_runs(three_runs, value_of, higher):
    values = {run["run_id"]: value_of(run) for run in three_runs["runs"]}
    best = (max if higher else min)(values.values())
    return sorted(run_id for run_id, value in values.items() if value == best)


def test_json_holds_runs_parameters_metrics_and_the_best_of_each(three_runs, cli):
    result = cli("runs", "compare", *ids_of(three_runs), "--json", env=three_runs["env"])
    assert result.returncode == 0, result.stderr
    comparison = json.loads(result.stdout)
    assert set(comparison) == {"runs", "parameters", "metrics", "best"}
    assert [run["run_id"] for run in comparison["runs"]] == ids_of(three_runs)
    assert all(run["status"] == "completed" and run["outputs"] == "here" for run in comparison["runs"])

    lr = comparison["parameters"]["lr"]
    assert lr["differs"] and lr["values"] == {run["run_id"]: run["lr"] for run in three_runs["runs"]}
    for same, value in (("arch", "resnet18"), ("mode", "linear"), ("epochs", 2), ("backend", "local")):
        entry = comparison["parameters"][same]
        assert not entry["differs"] and set(entry["values"].values()) == {value}

    metrics = comparison["metrics"]
    for run in three_runs["runs"]:
        for key in ("accuracy", "macro_accuracy", "macro_f1", "log_loss", "log_loss_reduction"):
            assert metrics[key]["values"][run["run_id"]] == run["metrics"][key]
        assert metrics["best_val_loss"]["values"][run["run_id"]] == min(row["val_loss"] for row in run["history"])
        assert metrics["epochs"]["values"][run["run_id"]] == 2
        assert metrics["seconds"]["values"][run["run_id"]] > 0
    assert metrics["accuracy"]["better"] == "higher" and metrics["log_loss"]["better"] == "lower"
    best = comparison["best"]
    assert sorted(best["accuracy"]["runs"]) == best_runs(three_runs, lambda r: r["metrics"]["accuracy"], True)
    assert sorted(best["log_loss"]["runs"]) == best_runs(three_runs, lambda r: r["metrics"]["log_loss"], False)
    assert sorted(best["best_val_loss"]["runs"]) == best_runs(
        three_runs, lambda r: min(row["val_loss"] for row in r["history"]), False)
    assert "epochs" not in best  # no number of epochs is better than another


def cells(stdout, label):
    """The cells after the row label `label` of the table in `stdout` (rich's box: │ separators)."""
    for line in stdout.splitlines():
        parts = [part.strip() for part in line.split("│")]
        if len(parts) > 2 and parts[1] == label:
            return parts[2:-1]
    raise AssertionError(f"no row {label!r} in:\n{stdout}")


def test_table_marks_the_best_values_and_shows_what_differs_and_what_is_shared(three_runs, cli):
    ids = ids_of(three_runs)
    result = cli("runs", "compare", *ids, env=three_runs["env"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    header = next(line for line in out.splitlines() if ids[0] in line)
    assert all(run_id in header for run_id in ids), "run ids are not cut off a terminal"
    assert cells(out, "lr") == [f"{run['lr']:g}" for run in three_runs["runs"]]
    for label, key, higher in (("accuracy", "accuracy", True), ("log-loss", "log_loss", False),
                               ("macro F1", "macro_f1", True)):
        best = best_runs(three_runs, lambda r: r["metrics"][key], higher)
        row = cells(out, label)
        assert [cell.endswith("*") for cell in row] == [run_id in best for run_id in ids], row
        assert [float(cell.rstrip(" *")) for cell in row] == [round(r["metrics"][key], 4) for r in three_runs["runs"]]
    shared = next(line for line in out.splitlines() if line.startswith("same in every run:"))
    shared_items = shared.split(":", 1)[1].strip().split(", ")
    assert "arch resnet18" in shared_items and "mode linear" in shared_items
    assert not any(item.startswith("lr ") for item in shared_items)
    assert "* the best value of each metric" in out and "\x1b[" not in out  # plain text off a terminal


def test_runs_without_metrics_show_dashes_and_undownloaded_outputs_are_named(three_runs, cli):
    ledger = Ledger(three_runs["home"] / "state" / "orchestrate" / "ledger.db")
    home = three_runs["home"]
    ledger.add(RunRecord(run_id="digits-still-running", name="digits", backend="local", status="running",
                         dataset=str(home / "data"), run_dir=str(home / "runs" / "digits-still-running"),
                         params={"train_args": ["--lr", "0.5"]}))
    ledger.add(RunRecord(run_id="digits-not-downloaded", name="digits", backend="docker", status="completed",
                         dataset=str(home / "data"), run_dir=str(home / "runs" / "digits-not-downloaded"),
                         params={"train_args": []}, metrics={"accuracy": 0.25, "log_loss": 9.0}))
    first = ids_of(three_runs)[0]
    result = cli("runs", "compare", first, "digits-still-running", "digits-not-downloaded", env=three_runs["env"])
    assert result.returncode == 0, result.stderr
    accuracy = cells(result.stdout, "accuracy")
    assert accuracy[1] == "-" and accuracy[2].startswith("0.2500")
    assert cells(result.stdout, "best val loss")[1:] == ["-", "-"]
    assert cells(result.stdout, "status") == ["completed", "running", "completed"]
    assert cells(result.stdout, "lr") == ["0.1", "0.5", "0.001"]  # a run without --lr has the default
    assert "digits-not-downloaded: outputs not downloaded" in result.stdout
    as_json = json.loads(cli("runs", "compare", first, "digits-still-running", "--json", env=three_runs["env"]).stdout)
    assert as_json["metrics"]["accuracy"]["values"]["digits-still-running"] is None
    assert as_json["runs"][1]["outputs"] is None


def test_an_unknown_run_or_a_single_run_is_one_line_and_exit_2(three_runs, cli):
    first = ids_of(three_runs)[0]
    unknown = cli("runs", "compare", first, "no-such-run", env=three_runs["env"])
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.strip().splitlines() == ["error: unknown run 'no-such-run' (see 'orchestrate runs list')"]
    single = cli("runs", "compare", first, env=three_runs["env"])
    assert single.returncode == 2 and len(single.stderr.strip().splitlines()) == 1
    twice = cli("runs", "compare", first, first[:-1], env=three_runs["env"])
    assert twice.returncode == 2 and "more than once" in twice.stderr


def test_training_epoch_lines_are_whole_off_a_terminal(three_runs):
    """`train` piped (COLUMNS=80): each epoch line, with its "*best" marker, on one line."""
    for run in three_runs["runs"]:
        lines = run["stderr"].splitlines()
        epochs = [line for line in lines if line.lstrip().startswith("epoch ")]
        assert len(epochs) == 2, run["stderr"]
        assert all("val_acc" in line and line.rstrip().endswith(("s", "*best")) for line in epochs), epochs
        assert any(line.endswith("*best") for line in epochs)
        assert not any(line.strip() == "*best" for line in lines)


def test_damaged_run_files_show_dashes_and_do_not_stop_the_comparison(tmp_path):
    """compare reads with the report's readers (RunFolder.metrics, history, log_events),
    but one damaged run must not hide the others: its values are dashes (`orchestrate report`
    names the damaged file)."""
    from orchestrator.compare import compare

    records = []
    for name, metrics, history in (("list-metrics", "[]", '[1, 2]\n'), ("no-epoch", '{"accuracy": 0.5}', '{"val_loss": 1}\n')):
        (tmp_path / name / "outputs").mkdir(parents=True)
        (tmp_path / name / "outputs" / "metrics.json").write_text(metrics)
        (tmp_path / name / "outputs" / "history.jsonl").write_text(history)
        records.append(RunRecord(run_id=name, name=name, backend="local", status="completed", dataset="d",
                                 run_dir=str(tmp_path / name), params={"train_args": ["--lr", "1e-2"]}))
    comparison = compare(records)
    assert comparison["metrics"]["accuracy"]["values"] == {"list-metrics": None, "no-epoch": 0.5}
    assert set(comparison["metrics"]["best_val_loss"]["values"].values()) == {None}
    assert set(comparison["metrics"]["seconds"]["values"].values()) == {None}  # no log in either folder
    assert comparison["parameters"]["lr"] == {"values": {"list-metrics": 0.01, "no-epoch": 0.01}, "differs": False}
