"""The run folder's one owner (orchestrator.run_folder.RunFolder): its readers refuse a damaged file
in one line that names it, it finds the run folder of a path, and the local backend's job writes its
files where it says (a real job, train.py detached under its supervisor)."""
import json
import time

import pytest

from imagegen import make_dataset
from orchestrator.backends.base import COMPLETED, JobSpec
from orchestrator.backends.local import LocalBackend
from orchestrator.errors import UsageError
from orchestrator.run_folder import HISTORY, LABELS, METRICS, MODEL, PREDICTIONS, RunFolder


def damaged(folder, path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return folder


def one_line_naming(exc_info, path):
    message = str(exc_info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_damaged_spec_is_refused_in_one_line_naming_it_unless_not_strict(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.spec() is None  # missing: nothing to refuse
    damaged(folder, folder.spec_path, '{"run_id": "r-1",')
    with pytest.raises(UsageError) as exc:
        folder.spec()
    assert "unreadable" in one_line_naming(exc, folder.spec_path)
    assert folder.spec(strict=False) is None
    damaged(folder, folder.spec_path, '["not", "an", "object"]')
    with pytest.raises(UsageError) as exc:
        folder.spec()
    assert "JSON list, not an object" in one_line_naming(exc, folder.spec_path)


def test_damaged_metrics_are_none_or_a_one_line_refusal_naming_the_file(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.metrics() is None and folder.metrics(strict=True) is None
    path = folder.output(METRICS)
    damaged(folder, path, "{\"accuracy\": 0.9")
    assert folder.metrics() is None
    with pytest.raises(UsageError) as exc:
        folder.metrics(strict=True)
    one_line_naming(exc, path)
    path.write_bytes(b'{"accuracy": "\xff"}')  # not UTF-8
    with pytest.raises(UsageError) as exc:
        folder.metrics(strict=True)
    one_line_naming(exc, path)
    path.write_text('{"accuracy": 0.9}')
    assert folder.metrics(strict=True) == {"accuracy": 0.9}


@pytest.mark.parametrize("text, words", [
    ('{"epoch": 1}\n{"epoch": 2, "val_accuracy"\n', "line 2"),
    ('{"epoch": 1}\n[1, 2]\n', "line 2 is not an epoch's row"),
    ('{"epoch": "1"}\n', "line 1 is not an epoch's row"),
    ('{"epoch": true}\n', "line 1 is not an epoch's row"),
])
def test_a_damaged_history_is_refused_in_one_line_naming_the_file_and_line(tmp_path, text, words):
    folder = RunFolder(tmp_path)
    assert folder.history() == []  # missing: no epochs yet
    path = folder.output(HISTORY)
    damaged(folder, path, text)
    with pytest.raises(UsageError) as exc:
        folder.history()
    assert words in one_line_naming(exc, path)


def test_history_rows_skip_blank_lines(tmp_path):
    folder = RunFolder(tmp_path)
    damaged(folder, folder.output(HISTORY), '{"epoch": 1, "val_accuracy": 0.5}\n\n{"epoch": 2}\n')
    assert [row["epoch"] for row in folder.history()] == [1, 2]


def test_containing_finds_a_run_folder_from_itself_or_its_outputs_and_nothing_else(tmp_path):
    run = RunFolder(tmp_path / "runs" / "r-1")
    run.create()
    assert RunFolder.containing(run.path) is None  # no spec.json: not (yet) a run folder
    run.write_spec({"run_id": "r-1"})
    assert RunFolder.containing(run.path).path == run.path
    assert RunFolder.containing(run.outputs).path == run.path
    assert RunFolder.containing(run.logs) is None
    loose = tmp_path / "copied" / "outputs"  # outputs copied elsewhere, without their run folder
    loose.mkdir(parents=True)
    assert RunFolder.containing(loose) is None


def test_output_files_lists_the_job_outputs_that_are_there(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.output_files() == {}
    folder.create()
    for name in (MODEL, LABELS, "notes.txt"):
        folder.output(name).write_text("x")
    assert folder.output_files() == {MODEL: str(folder.output(MODEL)), LABELS: str(folder.output(LABELS))}


def test_backend_state_round_trips_and_a_damaged_one_reads_as_none(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.backend_state() is None
    folder.write_backend_state({"job": "j-1", "workspace": {"workspace_name": "ws"}})
    assert folder.backend_state() == {"job": "j-1", "workspace": {"workspace_name": "ws"}}
    folder.backend_state_path.write_text("{")
    assert folder.backend_state() is None


@pytest.mark.slow
def test_the_local_backends_job_writes_its_files_where_the_run_folder_says(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=6)
    folder = RunFolder(tmp_path / "runs" / "r-1")
    spec = JobSpec(run_id="r-1", data=data, run_dir=folder.path, train_args=[
        "--arch", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "16", "--workers", "0",
        "--epochs", "1"])
    backend = LocalBackend()
    backend.prepare(spec)
    run = backend.submit(spec)
    deadline = time.monotonic() + 300
    while backend.exit_code(run) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert backend.status(run) == COMPLETED, folder.log_path.read_text()[-2000:]
    assert set(folder.output_files()) == {MODEL, LABELS, METRICS, HISTORY, PREDICTIONS}
    assert 0 <= folder.metrics(strict=True)["accuracy"] <= 1
    assert [row["epoch"] for row in folder.history()] == [1]
    assert json.loads(folder.output(LABELS).read_text())
    assert any(path.suffix == ".pt" for path in folder.checkpoints.iterdir())
    kinds = [event["type"] for event in folder.log_events()]
    assert "run_start" in kinds and kinds[-1] == "run_end"
    lines = [line.text for line in backend.log_lines(run, follow=False)]
    assert lines == folder.log_path.read_text().splitlines()  # the backend reads the log the folder names


def _add_field(folder, index):
    RunFolder(folder).update_backend_state(**{f"field{index}": index})


def test_concurrent_updates_of_the_backend_state_keep_every_field(tmp_path):
    """A submit adding its Studio URL, `runs show` caching a price and `register` its assets, from
    processes of their own: each update re-reads the file under the folder's lock, none is lost."""
    import multiprocessing

    folder = RunFolder(tmp_path)
    folder.write_backend_state({"job": "j-1"})
    processes = [multiprocessing.Process(target=_add_field, args=(tmp_path, i)) for i in range(12)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    assert folder.backend_state() == {"job": "j-1", **{f"field{i}": i for i in range(12)}}
