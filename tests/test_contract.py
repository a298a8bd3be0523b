"""The client and the job stay in step: training options and event types (DESIGN.md 4.1, 4.2).

The options are compared parser against parser, in both directions: names, kinds, choices,
defaults, and each range probed at its bounds on both sides."""
import argparse
import math

import click
import pytest

from orchestrator.events import KNOWN_TYPES, PREFIX, parse_line
from orchestrator.cli.render import EventRenderer
from remote_scripts import progress
from remote_scripts.options import ARCHS, BY_DEST, OPTIONS, to_arguments


JOB_PATHS = {"data", "output", "checkpoint_dir", "help"}  # chosen by each backend, not by the user


def job_parser():
    from remote_scripts.train import get_args_parser
    return get_args_parser()


def job_actions():
    return {a.dest: a for a in job_parser()._actions if a.dest not in JOB_PATHS}


def client_params():
    from orchestrator.cli.train import train
    names = {option.dest for option in OPTIONS}
    return {p.name: p for p in train.params if p.name in names}


def kind_of_action(action):
    if isinstance(action, argparse._StoreTrueAction):
        return "flag"
    if action.choices:
        return "choice"
    return {int: "int", float: "float", None: "str", str: "str"}[action.type]


def kind_of_param(param):
    if param.is_flag:
        return "flag"
    if isinstance(param.type, click.Choice):
        return "choice"
    return {"int": "int", "float": "float", "text": "str"}[param.type.name]


def test_the_client_and_the_job_accept_the_same_options_in_both_directions():
    job, client = job_actions(), client_params()
    assert set(job) == set(client), f"only in train.py: {set(job) - set(client)}; only in the CLI: {set(client) - set(job)}"
    for dest, action in job.items():
        param = client[dest]
        assert param.opts == list(action.option_strings), dest
        assert kind_of_action(action) == kind_of_param(param), dest
        if action.choices:
            assert tuple(action.choices) == tuple(param.type.choices), dest
        default = False if kind_of_action(action) == "flag" else action.default
        assert default == BY_DEST[dest].default, dest  # the job's default is the table's ...
        if default is not None and default is not False:  # ... and the CLI's help says it
            assert f"[default: {default}]" in param.help, dest


def number_probes(option):
    """Values at and around each bound, and the non-finite ones."""
    values = [math.nan, math.inf, -math.inf] if option.kind == "float" else []
    step = 1 if option.kind == "int" else 1e-6
    for bound in (option.low, option.high):
        if bound is not None:
            values += [bound - step, bound, bound + step]
    return values


# probed alone: the two fractions are also checked together (their sum), on both sides
ALONE = {"--val-fraction": ["--test-fraction", "0"], "--test-fraction": ["--val-fraction", "0"]}


def accepted_by_job(flag, value):
    from remote_scripts.lifecycle import UsageError
    from remote_scripts.train import parse_args
    try:
        parse_args(["--data", "d", "--output", "o", *ALONE.get(flag, []), flag, str(value)])
        return True
    except UsageError:
        return False


def accepted_by_client(param, value):
    try:
        param.type.convert(str(value), param, None)
        return True
    except click.BadParameter:
        return False


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.kind in ("int", "float")], ids=lambda o: o.flag)
def test_ranges_are_the_same_on_both_sides(option):
    param = client_params()[option.dest]
    for value in number_probes(option):
        assert accepted_by_job(option.flag, value) == accepted_by_client(param, value), (option.flag, value)


def test_a_range_error_reads_the_same_on_both_sides(cli, tmp_path):
    result = cli("train", tmp_path, "--image-size", "4096")
    assert result.returncode == 2 and "--image-size must be between 16 and 2048" in result.stderr


def test_options_become_flags_in_table_order_and_unset_ones_are_left_to_train_py():
    args = to_arguments({"epochs": 3, "arch": "resnet18", "lr": None, "seed": 0, "balance": True,
                         "no_hflip": False})
    assert args == ["--arch", "resnet18", "--epochs", "3", "--balance", "--seed", "0"]
    assert accepted_by_job("--arch", "resnet18")


def test_every_architecture_has_torchvision_weights():
    from remote_scripts.models import ARCHS as WEIGHT_ENUMS
    assert set(WEIGHT_ENUMS) == set(ARCHS)


def test_the_client_reports_every_output_file_the_job_writes(tmp_path):
    """train --json lists the job's outputs (4.1) as the run folder knows them: a file added to the
    job is added there too."""
    from orchestrator.run_folder import RunFolder
    from remote_scripts.outputs import OUTPUT_FILES

    folder = RunFolder(tmp_path)
    folder.outputs.mkdir()
    for name in OUTPUT_FILES:
        folder.output(name).write_bytes(b"")
    assert set(folder.output_files()) == set(OUTPUT_FILES)


def test_client_understands_every_event_type_the_script_emits():
    assert set(progress.EVENT_TYPES) <= KNOWN_TYPES
    assert progress.PREFIX == PREFIX


def test_renderer_has_a_handler_for_every_known_type():
    """A training run's renderer handles every type but a search's; a search's renderer all of them."""
    from orchestrator.cli.render import SearchRenderer

    search_only = {"trial_start", "trial_end"}
    assert not [t for t in KNOWN_TYPES - search_only if not hasattr(EventRenderer, "_on_" + t)]
    assert not [t for t in KNOWN_TYPES if not hasattr(SearchRenderer, "_on_" + t)]


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


def test_from_arguments_is_the_inverse_of_to_arguments():
    from remote_scripts.options import from_arguments

    values = {"arch": "resnet18", "epochs": 3, "lr": 0.01, "label_smoothing": 0.1, "balance": True,
              "no_hflip": True, "time_budget": 60.0, "labels": "tags.tsv", "mode": "linear"}
    assert from_arguments(to_arguments(values)) == values
    every = {option.dest: True if option.kind == "flag" else
             (option.choices[-1] if option.kind == "choice" else 7 if option.kind == "int" else
              0.5 if option.kind == "float" else "text") for option in OPTIONS}
    assert from_arguments(to_arguments(every)) == every
    assert to_arguments(from_arguments(to_arguments(every))) == to_arguments(every)
    # numbers as numbers (1e-2 is 0.01); an option a newer job knows is kept, its value too
    assert from_arguments(["--lr", "1e-2", "--future-flag", "--future-size", "3", "--epochs", "x"]) == {
        "lr": 0.01, "future_flag": True, "future_size": "3", "epochs": "x"}
    assert from_arguments([]) == {}


def test_the_value_a_backend_reads_is_the_one_train_py_sees():
    """given_value: the last value given wins (as in argparse), else the table's default."""
    from remote_scripts.options import given_value

    arguments = ["--arch", "resnet18", "--epochs", "3", "--arch", "resnet34", "--weights", "/w/state.pt"]
    assert given_value(arguments, "--arch") == "resnet34"
    assert given_value(arguments, "--weights") == "/w/state.pt"
    assert given_value(arguments, "--labels") == "folder"
    assert given_value([], "--weights") == "imagenet"
