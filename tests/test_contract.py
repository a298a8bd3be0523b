"""The client and the job stay in step: training flags and event types (DESIGN.md 4.1, 4.2)."""
import subprocess
import sys

from orchestrator.cli.training_options import TRAINING_OPTIONS, to_train_args
from orchestrator.events import KNOWN_TYPES, PREFIX, parse_line
from orchestrator.paths import remote_scripts_dir
from orchestrator.render import EventRenderer
from remote_scripts import progress


def test_every_training_option_is_a_train_py_flag():
    help_text = subprocess.run([sys.executable, str(remote_scripts_dir() / "train.py"), "--help"],
                               capture_output=True, text=True, check=True).stdout
    missing = [flag for flag, _, _ in TRAINING_OPTIONS if flag not in help_text]
    assert not missing, f"train.py does not accept {missing}"


def test_options_become_flags_in_table_order_and_unset_ones_are_left_to_train_py():
    args = to_train_args({"epochs": 3, "arch": "resnet18", "lr": None, "seed": 0})
    assert args == ["--arch", "resnet18", "--epochs", "3", "--seed", "0"]


def test_client_understands_every_event_type_the_script_emits():
    assert set(progress.EVENT_TYPES) <= KNOWN_TYPES
    assert progress.PREFIX == PREFIX


def test_renderer_has_a_handler_for_every_known_type():
    missing = [t for t in KNOWN_TYPES if not hasattr(EventRenderer, "_on_" + t)]
    assert not missing


def test_emitted_line_round_trips_through_the_parser(capsys):
    progress.emit("epoch_end", epoch=2, epochs=5, train_loss=0.5)
    line = capsys.readouterr().out.strip()
    event = parse_line("2026-11-23T10:00:00Z stdout " + line)  # prefixes added by log systems are fine
    assert event["type"] == "epoch_end" and event["epoch"] == 2 and event["v"] == progress.VERSION


def test_parser_ignores_ordinary_and_malformed_lines():
    assert parse_line("Epoch 1: loss 0.3") is None
    assert parse_line(PREFIX + "{not json") is None
    assert parse_line(PREFIX + '["a list"]') is None
    assert parse_line(PREFIX + '{"v": 1, "type": "from_the_future"}')["type"] == "from_the_future"
