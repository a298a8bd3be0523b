"""benchmarks/gpu.sh, the script the lead runs on a lent GPU, checked here where there is none.

Device time is short and rare, so the script must work the first time it meets a GPU: its smoke
mode runs every step (data generation, the job, the plain loops, featurizing, the JSON) with tiny
sizes on the CPU, and without it a machine with no CUDA device is refused in one line.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def gpu_sh(out, *args, **env):
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env})


def test_smoke_mode_measures_both_sides_of_both_benchmarks_on_the_cpu(tmp_path):
    result = gpu_sh(tmp_path / "out", "--smoke")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert found["smoke"] is True and found["config"]["arch"] == "resnet18"
    train = found["train"]
    assert train["job"]["device"].startswith("cpu") and train["job"]["precision"] in ("bf16", "fp32")
    for side in (train["job"], train["plain"]):
        assert len(side["epoch_seconds"]) == found["config"]["epochs"] and side["steady_rate"] > 0
    assert train["ratio"] == train["job"]["steady_rate"] / train["plain"]["steady_rate"]
    assert train["ceiling"] > 0 and "train" in train["job"]["phases"]
    featurize = found["featurize"]
    for side in ("job", "plain_amp", "plain_fp32"):
        assert len(featurize[side]) == found["config"]["repeats"] and featurize["medians"][side] > 0
    assert featurize["ratio"] == featurize["medians"]["job"] / featurize["medians"]["plain_amp"]
    assert featurize["images"] == found["config"]["images"]
    assert found["references"]["A100"] == 2470 and found["references"]["V100"] == 1200
    log = (tmp_path / "out" / "gpu.log").read_text()
    assert "ratio job / plain loop" in log and "ratio job / plain autocast loop" in log
    assert "NVIDIA ResNet50 AMP training 2,470 img/s on one A100" in log
    assert (tmp_path / "out" / "job.log").stat().st_size > 0


def test_without_a_cuda_device_it_stops_at_once_with_one_line(tmp_path):
    result = gpu_sh(tmp_path / "out", CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()  # gpu.sh sends stderr there too, into gpu.log
    assert len(lines) == 1 and lines[0].startswith("gpu.sh: no CUDA device"), result.stdout + result.stderr
    assert not (tmp_path / "out" / "gpu.json").exists()
