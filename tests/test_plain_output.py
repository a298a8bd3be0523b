"""Output off a terminal (a CI log, `| tee`, a notebook): whole lines, and progress lines for long phases.

The commands run as real subprocesses with piped stdout and stderr (not terminals), with
COLUMNS=80, the width rich assumes there, so that a wrapped or cut line would show. The long
phase comes from a run folder whose log holds the events a job writes, timed as a slow job
times them; `orchestrate logs` renders it as it renders any finished run.
"""
import io
import json
import re

from rich.console import Console

from orchestrator.ledger import Ledger, RunRecord
from orchestrator.cli.render import PLAIN_PROGRESS_SECONDS, EventRenderer

NARROW = {"COLUMNS": "80"}
LONG_NAME = "aerial-imagery-land-use-walkthrough-with-a-name-longer-than-a-terminal"


def test_runs_list_piped_shows_whole_run_ids_statuses_and_datasets(cli, tmp_path):
    ledger = Ledger()
    dataset = str(tmp_path / "datasets" / "a-folder-with-a-long-name-so-that-the-row-exceeds-eighty-columns")
    runs = {f"{LONG_NAME}-20261202-0515{i:02d}-ab1{i}": status
            for i, status in enumerate(("completed", "failed", "canceled", "running"))}
    for run_id, status in runs.items():
        ledger.add(RunRecord(run_id=run_id, name=LONG_NAME, backend="local", status=status, dataset=dataset,
                             run_dir=str(tmp_path / "runs" / run_id), metrics={"accuracy": 0.9312}))
    result = cli("runs", "list", env=NARROW)
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout and "\x1b[" not in result.stdout
    for run_id, status in runs.items():
        row = next(line for line in result.stdout.splitlines() if run_id in line)
        assert status in row and dataset in row and "0.9312" in row


def event(type_, at, **fields):
    return "@@orchestrate " + json.dumps({"v": 1, "type": type_, "time": at, **fields})


def slow_job_log(start):
    """The log of a job whose featurize phase takes 120 s (50 images/s, an event every 0.5 s) and
    whose two epochs take 15 s each; ordinary log lines in between, as train.py prints them."""
    lines = [event("phase", start, name="scan"),
             event("run_start", start + 1, classes=["a", "b"], split={"train": 4800, "val": 600, "test": 600},
                   device="cpu"),
             event("phase", start + 2, name="featurize")]
    for k in range(1, 241):
        lines.append(event("progress", start + 2 + 0.5 * k, phase="featurize", done=25 * k, total=6000))
        if k % 60 == 0:
            lines.append(f"featurized {25 * k} images")
    train_start = start + 123
    lines.append(event("phase", train_start, name="train"))
    for epoch in (1, 2):
        epoch_start = train_start + 15 * (epoch - 1)
        for k in range(1, 30):
            lines.append(event("progress", epoch_start + 0.5 * k, phase="train", done=10 * k, total=300,
                               epoch=epoch, epochs=2))
        lines.append(event("epoch_end", epoch_start + 15, epoch=epoch, epochs=2, train_loss=0.693147,
                           train_accuracy=0.51234, val_loss=0.6021 / epoch, val_accuracy=0.61234, seconds=15.0,
                           best=True))
    lines.append(event("run_end", train_start + 31, status="completed", seconds=154.0, exit_code=0))
    return "\n".join(lines) + "\n"


def progress_times(stderr, phase, items_per_second, start):
    """(the job time each progress line of `phase` was printed at, the line), from its done count."""
    found = []
    for line in stderr.splitlines():
        match = re.match(rf"  {phase}(?:, epoch (\d) of 2)?: (\d+)/\d+ ", line)
        if match:
            epoch = int(match.group(1) or 1)
            found.append((start(epoch) + int(match.group(2)) / items_per_second, line))
    return found


def test_a_long_phase_logs_a_progress_line_every_ten_seconds(cli, tmp_path):
    run_id = "slow-20261202-051500-ab12"
    run_dir = tmp_path / "runs" / run_id
    (run_dir / "logs").mkdir(parents=True)
    start = 1_764_650_000.0
    (run_dir / "logs" / "train.log").write_text(slow_job_log(start))
    (run_dir / "exit_code").write_text("0\n")
    Ledger().add(RunRecord(run_id=run_id, name="slow", backend="local", status="completed", dataset="/data",
                           run_dir=str(run_dir), exit_code=0))
    result = cli("logs", run_id, env=NARROW)
    assert result.returncode == 0, result.stderr

    featurize = progress_times(result.stderr, "featurize", 50, lambda epoch: start + 2)
    times = [at for at, _ in featurize]
    assert len(featurize) == 12, result.stderr  # 120 s of progress: a line each 10 s after the phase began
    gaps = [b - a for a, b in zip([start + 2] + times, times)]
    assert all(PLAIN_PROGRESS_SECONDS <= gap <= PLAIN_PROGRESS_SECONDS + 0.5 for gap in gaps), gaps  # 0.5: events
    assert start + 2 + 120 - times[-1] <= PLAIN_PROGRESS_SECONDS  # and none missing at the end
    assert featurize[0][1] == "  featurize: 500/6000 (8%)  50.0/s  1m50s left"

    train = progress_times(result.stderr, "train", 20, lambda epoch: start + 123 + 15 * (epoch - 1))
    train_times = [at for at, _ in train]
    assert len(train) >= 2 and all(b - a >= PLAIN_PROGRESS_SECONDS for a, b in zip(train_times, train_times[1:]))
    assert all(re.search(r"20\.0/s  \d+s left$", line) for _, line in train), train

    epochs = [line for line in result.stderr.splitlines() if line.startswith("  epoch ")]
    assert epochs == [f"  epoch {e}/2  loss 0.6931  acc 0.5123  val_loss {0.6021 / e:.4f}  val_acc 0.6123  15.0s *best"
                      for e in (1, 2)]
    assert result.stderr.count("epoch 1/2") == 1 and result.stderr.count("epoch 2/2") == 1
    assert "job completed in 154.0s" in result.stderr


def test_the_renderer_times_events_without_a_timestamp_by_its_clock():
    """A short phase prints no progress line; a long one a line per PLAIN_PROGRESS_SECONDS of its clock."""
    now = [100.0]
    out = io.StringIO()
    renderer = EventRenderer(console=Console(file=out, width=80, force_terminal=False), clock=lambda: now[0])
    renderer.event({"type": "phase", "name": "evaluate"})
    for done in range(1, 9):  # 8 s: shorter than a progress line's interval
        now[0] += 1
        renderer.event({"type": "progress", "phase": "evaluate", "done": done, "total": 8})
    renderer.event({"type": "phase", "name": "featurize"})
    for done in range(1, 36):
        now[0] += 1
        renderer.event({"type": "progress", "phase": "featurize", "done": 4 * done, "total": 140})
    renderer.close()
    lines = out.getvalue().splitlines()
    assert lines == ["> evaluate", "> featurize", "  featurize: 40/140 (29%)  4.0/s  25s left",
                     "  featurize: 80/140 (57%)  4.0/s  15s left", "  featurize: 120/140 (86%)  4.0/s  5s left"]
