"""`orchestrate train --search`: the space, the local search end to end, the ledger and the tables."""
import json
from pathlib import Path

import pytest

from orchestrator.ledger import Ledger
from remote_scripts import search_space
from tests.imagegen import make_dataset


# -- the space ---------------------------------------------------------------------------------

def test_default_space_goes_cheapest_first_and_checks_every_value():
    trials = search_space.expand(search_space.DEFAULT_SPACE)
    modes = [trial["mode"] for trial in trials]
    assert modes == sorted(modes, key=["linear", "head", "full"].index)  # linear, then head, then full
    assert sum(mode == "linear" for mode in modes) >= 8 and "resnet18" in {t["arch"] for t in trials}
    assert len({json.dumps(t, sort_keys=True) for t in trials}) == len(trials)


def test_options_given_on_the_command_line_narrow_the_space():
    trials = search_space.with_fixed(search_space.expand(search_space.DEFAULT_SPACE), {"mode": "linear", "epochs": 3})
    assert {t["mode"] for t in trials} == {"linear"}
    assert all("epochs" not in t for t in trials)  # shared, not a trial's own: the job gets it once
    assert len(trials) == len({json.dumps(t, sort_keys=True) for t in trials})


@pytest.mark.parametrize("space, message", [
    ([], "non-empty list"),
    ([{"lr": []}], "'lr' has no values"),
    ([{"learning_rate": 0.1}], "'learning_rate' is not a training option"),
    ([{"seed": [0, 1]}], "same for every trial"),
    ([{"image-size": [64, 128]}], "same for every trial"),
    ([{"mode": "fast"}], "is not one of linear, head, full"),
    ([{"lr": -1}], "--lr must be positive"),
    ([{"epochs": 2.5}], "whole numbers"),
    ([{"balance": "yes"}], "a switch"),
])
def test_a_bad_space_is_one_line(space, message):
    with pytest.raises(search_space.SpaceError, match=message):
        search_space.expand(space)


def test_ranking_prefers_accuracy_then_loss_and_keeps_order_on_ties():
    rows = [{"trial": "t01", "val_accuracy": 0.9, "val_loss": 0.3}, {"trial": "t02", "val_accuracy": 0.95, "val_loss": 0.5},
            {"trial": "t03", "val_accuracy": 0.95, "val_loss": 0.2}, {"trial": "t04", "val_accuracy": None},
            {"trial": "t05", "val_accuracy": 0.9, "val_loss": 0.3}]
    assert [r["trial"] for r in sorted(rows, key=search_space.rank_key)] == ["t03", "t02", "t01", "t05", "t04"]


def test_median_stopping_compares_a_trial_with_the_earlier_trials_of_its_mode():
    from remote_scripts.search import Search

    search = Search("unused", [], None, 0.0)

    def history(*losses):
        return [{"epoch": i, "val_loss": loss} for i, loss in enumerate(losses, 1)]

    search.summaries = [{"config": {"mode": "linear"}, "history": history(1.0, 0.5, 0.4)},
                        {"config": {"mode": "linear"}, "history": history(0.9, 0.6, 0.3)},
                        {"config": {"mode": "full"}, "history": history(0.1, 0.05)}]
    search.current = {"mode": "linear"}
    assert not search.falls_behind(history(2.0))            # before DELAY_EPOCHS
    assert search.falls_behind(history(2.0, 0.8))           # 0.8 > median(0.5, 0.6)
    assert not search.falls_behind(history(2.0, 0.5))       # not above the median
    search.current = {"mode": "head"}                       # nobody of its mode to compare with
    assert not search.falls_behind(history(2.0, 9.0))


# -- a local search end to end -------------------------------------------------------------------

@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One search on the local backend, through the real CLI in a subprocess: three linear-mode
    trials, then one full fine-tuning trial. Its time budget is far beyond what the trials take
    (each trial still gets it): nothing here depends on how fast the machine is;
    test_the_budget_ends_the_trial_it_catches_and_starts_no_other has a budget that binds."""
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("search")
    data = make_dataset(root / "shapes", per_class=20, size=40)
    space = root / "space.yml"
    space.write_text("- mode: linear\n  lr: [0.001, 0.01, 0.1]\n"
                     "- {mode: full, arch: resnet18, epochs: 2, lr: 0.001}\n")
    env = {"XDG_STATE_HOME": str(root / "state"), "XDG_CACHE_HOME": str(root / "cache")}
    result = run_cli("train", data, "--backend", "local", "--search", "--space", space, "--time-budget", "3600",
                     "--weights", "none", "--image-size", "32", "--epochs", "4", "--runs-dir", root / "runs",
                     "--json", env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "env": env, "data": data, "json": json.loads(result.stdout), "stderr": result.stderr}


def train_events(run_dir):
    return [json.loads(line.split("@@orchestrate ", 1)[1]) for line in
            (Path(run_dir) / "logs" / "train.log").read_text().splitlines() if "@@orchestrate " in line]


def test_the_search_runs_its_trials_in_order(searched):
    found = searched["json"]
    trials = {t["trial"]: t for t in found["trials"]}
    assert sorted(trials) == ["t01", "t02", "t03", "t04"]
    assert all(trials[t]["status"] == "completed" and trials[t]["stopped"] == "completed" for t in trials)
    assert trials["t04"]["epochs"] == 2 and trials["t01"]["epochs"] == 4  # its own --epochs over the shared one
    events = train_events(found["run_dir"])
    assert [e["trial"] for e in events if e["type"] == "trial_start"] == ["t01", "t02", "t03", "t04"]
    assert [e["trial"] for e in events if e["type"] == "trial_end"] == ["t01", "t02", "t03", "t04"]


def test_the_budget_ends_the_trial_it_catches_and_starts_no_other(tmp_path):
    """A trial that only the budget can end (patience 0, more epochs than any machine gets
    through): it stops after the epoch that spends the budget, however slow that epoch is, and
    the next trial never starts -- no outcome here depends on the machine's speed."""
    from tests.conftest import run_cli

    data = make_dataset(tmp_path / "shapes", per_class=12, size=32)
    space = tmp_path / "space.yml"
    space.write_text("- {mode: full, arch: resnet18, epochs: 100000, patience: 0, lr: [0.001, 0.003]}\n")
    result = run_cli("train", data, "--backend", "local", "--search", "--space", space, "--time-budget", "5",
                     "--weights", "none", "--image-size", "32", "--runs-dir", tmp_path / "runs", "--json",
                     env={"XDG_STATE_HOME": str(tmp_path / "state")}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    trials = {t["trial"]: t for t in found["trials"]}
    assert (trials["t01"]["status"], trials["t01"]["stopped"]) == ("completed", "time_budget")
    assert 1 <= trials["t01"]["epochs"] < 100000 and trials["t01"]["seconds"] >= 5
    assert trials["t02"]["status"] == "not_started" and found["best"]["trial"] == "t01"
    events = train_events(found["run_dir"])
    assert [e["trial"] for e in events if e["type"] == "trial_end"] == ["t01"]
    seconds = [e["seconds"] for e in events if e["type"] == "run_end"][0]
    assert seconds <= 5 + trials["t01"]["seconds"]


def test_the_best_trial_is_the_search_and_its_metrics_are_its_runs(searched):
    found = searched["json"]
    best = found["best"]
    assert found["search_id"] == found["run_id"] and best["run_id"] == f"{found['search_id']}-{best['trial']}"
    assert found["trials"][0]["trial"] == best["trial"]  # ranked, best first
    ranked = [t[search_space.PRIMARY_METRIC] for t in found["trials"] if t["status"] == "completed"]
    assert ranked == sorted(ranked, reverse=True)
    run_dir = Path(found["run_dir"])
    trial_outputs = run_dir / "outputs" / "trials" / best["trial"] / "outputs"
    metrics = json.loads((trial_outputs / "metrics.json").read_text())
    for key in ("accuracy", "macro_accuracy", "macro_f1", "log_loss"):
        assert best[key] == metrics[key]
    assert json.loads((run_dir / "outputs" / "metrics.json").read_text()) == metrics == found["metrics"]
    assert (run_dir / "outputs" / "model.onnx").read_bytes() == (trial_outputs / "model.onnx").read_bytes()
    others = [t["trial"] for t in found["trials"] if t["trial"] != best["trial"] and t["status"] == "completed"]
    assert not any((run_dir / "outputs" / "trials" / t / "outputs" / "model.onnx").exists() for t in others)
    history = [json.loads(line) for line in (trial_outputs / "history.jsonl").read_text().splitlines()]
    kept = [row for row in history if row["best"]][-1]
    assert best["val_accuracy"] == kept["val_accuracy"]


def test_every_trial_is_a_run_in_the_ledger_under_the_search(searched, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", searched["env"]["XDG_STATE_HOME"])
    found = searched["json"]
    children = Ledger().children(found["search_id"])
    assert [c.run_id for c in children] == [f"{found['search_id']}-t0{n}" for n in range(1, 5)]
    for child in children:
        trial = next(t for t in found["trials"] if t["run_id"] == child.run_id)
        assert child.status == "completed" and child.metrics["accuracy"] == trial["accuracy"]
        assert child.search_id == found["search_id"] and Path(child.run_dir).is_dir()
    assert "--mode" in children[3].params["train_args"] and "--time-budget" in children[3].params["train_args"]


def test_runs_compare_of_a_search_shows_all_its_trials(searched):
    from tests.conftest import run_cli

    found = searched["json"]
    result = run_cli("runs", "compare", found["search_id"], "--json", env=searched["env"])
    assert result.returncode == 0, result.stderr
    comparison = json.loads(result.stdout)
    assert [r["run_id"] for r in comparison["runs"]] == [f"{found['search_id']}-t0{n}" for n in range(1, 5)]
    assert comparison["parameters"]["lr"]["differs"] and comparison["parameters"]["mode"]["differs"]
    # each trial's test metrics as the search reported them, and the best of each (ties: every run
    # holding it); log losses rarely tie where these tiny datasets give every trial accuracy 1.0
    for metric, pick in (("accuracy", max), ("log_loss", min)):
        values = {t["run_id"]: t[metric] for t in found["trials"]}
        assert comparison["metrics"][metric]["values"] == values
        best = comparison["best"][metric]
        assert best["value"] == pick(values.values())
        assert sorted(best["runs"]) == sorted(r for r, v in values.items() if v == best["value"])


def test_the_search_model_predicts(searched):
    from tests.conftest import run_cli

    found = searched["json"]
    image = next(Path(searched["data"]).rglob("*.png"), None) or next(Path(searched["data"]).rglob("*.jpg"))
    result = run_cli("predict", found["search_id"], image, "--json", env=searched["env"])
    assert result.returncode == 0, result.stderr


def test_a_trial_is_no_job_of_its_own(searched):
    """Commands on a job name the search instead; a prefix of the search's id is the search;
    a trial that is not the best has no model to predict with."""
    from tests.conftest import run_cli

    found = searched["json"]
    other = next(t for t in found["trials"] if t["status"] == "completed" and t["trial"] != found["best"]["trial"])
    for command in (["cancel"], ["logs"], ["status"], ["download"]):
        result = run_cli(*command, other["run_id"], env=searched["env"])
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"is a trial of the search {found['search_id']}" in result.stderr
    image = next(Path(searched["data"]).rglob("*.png"))
    result = run_cli("predict", other["run_id"], image, env=searched["env"])
    assert result.returncode == 2 and f"keeps the model of its best trial only, use {found['search_id']}" in result.stderr
    shown = run_cli("runs", "show", found["search_id"][:-2], "--json", env=searched["env"])
    assert shown.returncode == 0 and json.loads(shown.stdout)["run_id"] == found["search_id"], shown.stderr
    shown = run_cli("runs", "show", other["run_id"], "--json", env=searched["env"])
    assert shown.returncode == 0 and json.loads(shown.stdout)["search_id"] == found["search_id"]


def test_a_canceled_search_keeps_what_it_found(tmp_path):
    """SIGTERM during the second trial: the first is the search's model, the second is canceled,
    the rest never started, and search.json says so."""
    import signal
    import subprocess
    import sys

    data = make_dataset(tmp_path / "d", per_class=12, size=32)
    trials = [{"mode": "linear", "lr": 0.01}, {"mode": "full", "arch": "resnet18", "epochs": 500, "patience": 0},
              {"mode": "linear", "lr": 0.1}]
    job = subprocess.Popen([sys.executable, "remote_scripts/search.py", "--data", data, "--output", tmp_path / "out",
                            "--trials", search_space.trials_argument(trials), "--weights", "none",
                            "--image-size", "32", "--epochs", "2"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in job.stdout:
        if '"trial":"t02"' in line and '"type":"epoch_end"' in line:
            job.send_signal(signal.SIGTERM)
            break
    rest = job.communicate(timeout=120)[0]
    assert job.returncode == 143, rest[-2000:]
    doc = json.loads((tmp_path / "out" / "search.json").read_text())
    assert [(t["trial"], t["status"]) for t in doc["trials"]] == [("t01", "completed"), ("t02", "canceled"),
                                                                  ("t03", "not_started")]
    assert doc["best"] == "t01"
    assert (tmp_path / "out" / "model.onnx").read_bytes() == (tmp_path / "out" / "trials" / "t01" / "outputs" /
                                                              "model.onnx").read_bytes()
    assert not (tmp_path / "out" / "trials" / "t02" / "outputs" / "model.onnx").exists()


def test_the_table_and_the_live_lines(tmp_path):
    """Off a terminal: a line per trial start and end, the top-5 table with the best marked."""
    from tests.conftest import run_cli

    data = make_dataset(tmp_path / "colours", per_class=12, size=32)
    result = run_cli("train", data, "--backend", "local", "--search", "--mode", "linear", "--trials", "6",
                     "--weights", "none", "--image-size", "32", "--epochs", "2", "--runs-dir", tmp_path / "runs")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "search: up to 6 trial(s), ranked by validation accuracy" in result.stderr
    assert result.stderr.count("> t0") == 6 and "*best so far" in result.stderr
    assert "Top 5 of 6 trials" in result.stdout and "* the best trial" in result.stdout
    table = [line for line in result.stdout.splitlines() if "linear resnet" in line]
    assert len(table) == 5 and sum("*" in line.split("linear")[0] for line in table) == 1


@pytest.mark.parametrize("args, message", [
    (["--trials", "3"], "--trials and --space choose the trials of a search: add --search"),
    (["--search", "--nproc", "2"], "drop --nproc"),
    (["--search", "--space", "missing.yml"], "--space missing.yml: No such file or directory"),
    (["--max-concurrent-trials", "2"], "--max-concurrent-trials and --early-termination set up a search's sweep job"),
    (["--search", "--val-fraction", "0"], "ranks its trials by validation accuracy: --val-fraction must be above 0"),
    (["--search", "--batch-size", "1"], "trial 13 (full resnet50 lr 0.0001): --mode full needs --batch-size 2 or more"),
    (["--mode", "full", "--batch-size", "1"], "--mode full needs --batch-size 2 or more"),
])
def test_search_mistakes_are_one_line(tmp_path, run, args, message):
    data = make_dataset(tmp_path / "d", per_class=12, size=32)
    backend = ["--backend", "local"] if "--max-concurrent-trials" not in args else []
    code, out, err = run(["train", data, *backend, *args], {})
    assert code == 2 and message in err and "Traceback" not in err


def test_a_space_file_that_is_wrong_names_its_problem(tmp_path, run):
    data = make_dataset(tmp_path / "d", per_class=12, size=32)
    (tmp_path / "s.yml").write_text("- {seed: [1, 2]}\n")
    (tmp_path / "bad.yml").write_text("- [unclosed\n")
    code, _, err = run(["train", data, "--backend", "local", "--search", "--space", tmp_path / "s.yml"], {})
    assert code == 2 and "group 1: 'seed' is the same for every trial" in err
    code, _, err = run(["train", data, "--backend", "local", "--search", "--space", tmp_path / "bad.yml"], {})
    assert code == 2 and "is not YAML" in err and len(err.strip().splitlines()) == 1


def test_an_azure_search_is_a_sweep_job_whose_yaml_loads(tmp_path, run):
    """`train --search --backend azure --dry-run --export`: no cloud call; the YAML is a sweep job
    over the same trials, with the primary metric the local search ranks by."""
    from azure.ai.ml import load_job

    data = make_dataset(tmp_path / "d", per_class=12, size=32)
    env = {"AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000", "AZURE_RESOURCE_GROUP": "rg",
           "AZUREML_WORKSPACE_NAME": "ws"}
    code, out, err = run(["train", data, "--backend", "azure", "--search", "--mode", "linear", "--trials", "3",
                          "--time-budget", "900", "--dry-run", "--export", tmp_path / "sweep.yml"], env)
    assert code == 0, err
    assert "sweep job, 3 trial(s)" in out and "maximize val_accuracy" in out
    job = load_job(tmp_path / "sweep.yml")
    assert type(job).__name__ == "SweepJob"
    assert job.objective.primary_metric == search_space.PRIMARY_METRIC and job.objective.goal == "maximize"
    assert job.limits.max_total_trials == 3 and list(job.search_space["trial"].values) == [1, 2, 3]
    assert "--trial ${{search_space.trial}}" in job.trial.command and "search.py" in job.trial.command
