"""Benchmark: a search of 10 linear-mode trials against 10 separate linear-mode runs, side by side.

Generated data: 2,000 64x64 JPEGs in 10 classes (train_throughput.make_images). Both sides go
through the CLI on the local backend with ResNet50, --weights none (no download here),
--image-size 64 and the same 10 configurations (learning rate x weight decay):

  search    `orchestrate train DATA --search --space SPACE` : one job, the trials in one process
            (one decode, one featurization, a model exported only when a trial takes the lead)
  separate  `orchestrate train DATA --mode linear --lr L --weight-decay W`, ten times, each with a
            fresh --cache-dir, so it reuses nothing either (as the issue asks of the baseline)

Reported: each side's wall time (whole commands), the ratio (target: the search at least 4x
faster), and each side's best validation accuracy, so that the speed is not bought with other
results: trial k and separate run k train the same configuration on the same split and should
reach the same numbers. A private XDG_STATE_HOME keeps the benchmark's runs out of your ledger.

Run: .venv/bin/python benchmarks/search.py [--images 2000] [--json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import load, make_images  # noqa: E402  (beside this script)

LEARNING_RATES = (1e-3, 2e-3, 3e-3, 5e-3, 1e-2)
WEIGHT_DECAYS = (1e-4, 1e-2)
TARGET = 4.0
COMMON = ["--backend", "local", "--arch", "resnet50", "--weights", "none", "--image-size", "64", "--json"]


def orchestrate(args, env):
    """Run `orchestrate ARGS` (this interpreter's CLI): (wall seconds, its JSON result)."""
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", *args], capture_output=True, text=True,
                            env=env)
    wall = time.time() - started
    if result.returncode:
        raise RuntimeError(f"orchestrate {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall, json.loads(result.stdout)


def best_val_accuracy(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "outputs" / "history.jsonl").read_text().splitlines()]
    kept = [row for row in rows if row.get("best")] or rows
    return kept[-1]["val_accuracy"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="search-bench-") as work:
        work = Path(work)
        data = make_images(work / "data", options.images)
        env = dict(os.environ, XDG_STATE_HOME=str(work / "state"))
        trials = [{"lr": lr, "weight_decay": wd} for lr in LEARNING_RATES for wd in WEIGHT_DECAYS]
        space = work / "space.json"
        space.write_text(json.dumps([{"mode": "linear", "lr": list(LEARNING_RATES),
                                      "weight_decay": list(WEIGHT_DECAYS)}]))
        before = load()

        search_wall, found = orchestrate(["train", str(data), "--search", "--space", str(space), "--cache-dir",
                                          str(work / "cache-search"), "--runs-dir", str(work / "runs"), *COMMON], env)
        separate_walls, separate_best = [], []
        for number, trial in enumerate(trials):
            wall, run = orchestrate(["train", str(data), "--mode", "linear", "--lr", str(trial["lr"]),
                                     "--weight-decay", str(trial["weight_decay"]),
                                     "--cache-dir", str(work / f"cache-{number}"), "--runs-dir", str(work / "runs"),
                                     *COMMON], env)
            separate_walls.append(wall)
            separate_best.append(best_val_accuracy(run["run_dir"]))

    separate_wall = sum(separate_walls)
    ratio = separate_wall / search_wall
    trial_best = [trial["val_accuracy"] for trial in sorted(found["trials"], key=lambda t: t["trial"])]
    results = {
        "images": options.images, "trials": len(trials),
        "search_seconds": round(search_wall, 2), "separate_seconds": round(separate_wall, 2),
        "separate_run_seconds": [round(w, 2) for w in separate_walls], "ratio": round(ratio, 2), "target": TARGET,
        "search_best_val_accuracy": max(trial_best), "separate_best_val_accuracy": max(separate_best),
        "same_val_accuracy_per_configuration": trial_best == separate_best,
        "load_before": before, "load_after": load(),
    }
    if options.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{options.images} images, 64 px, ResNet50 (--weights none), {len(trials)} linear-mode configurations")
    print(f"  search (one job)            {search_wall:7.1f} s   best val acc {max(trial_best):.4f}")
    print(f"  10 separate runs            {separate_wall:7.1f} s   best val acc {max(separate_best):.4f}  "
          f"(each {min(separate_walls):.1f}-{max(separate_walls):.1f} s)")
    print(f"  search faster by {ratio:.2f}x (target >= {TARGET:g}x) {'PASS' if ratio >= TARGET else 'MISS'}")
    print(f"  same validation accuracy per configuration: {results['same_val_accuracy_per_configuration']}")
    print(f"  {before}; after: {results['load_after']}")


if __name__ == "__main__":
    main()
