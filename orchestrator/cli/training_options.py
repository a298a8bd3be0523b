"""The options of `orchestrate train`: click options generated from the job's own table and the backends'.

remote_scripts/options.py declares every train.py option once (type, range, choices, default,
help); train.py's argparse is generated from it too, so the client accepts exactly what the job
accepts, with the same messages. tests/test_contract.py compares the two parsers both ways.
"""
import click

from remote_scripts.options import OPTIONS


class JobNumber(click.ParamType):
    """An int or float option checked by the job's own range check (one message on both sides)."""

    def __init__(self, option):
        self.option = option
        self.name = option.kind

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = (int if self.option.kind == "int" else float)(value)
            except ValueError:
                self.fail(f"invalid {self.option.kind} value: {value!r}", param, ctx)
        problem = self.option.check(number)
        if problem:
            self.fail(problem, param, ctx)
        return number


def click_option(option, help_=None):
    """The click option for one job option. Defaults stay None (click's): the client passes only
    what the user set, so the job's defaults apply, and the help shows them."""
    if help_ is None:
        help_ = option.help[0].upper() + option.help[1:] + "."
        if option.default is not None and option.kind != "flag":
            help_ += f" [default: {option.default}]"
    if option.kind == "flag":
        return click.option(option.flag, option.dest, is_flag=True, default=None, help=help_)
    if option.kind == "choice":
        type_ = click.Choice(option.choices)
    elif option.kind == "str":
        type_ = str
    else:
        type_ = JobNumber(option)
    return click.option(option.flag, option.dest, type=type_, default=None, metavar=option.metavar, help=help_)


def training_options(command):
    """Decorator adding every training option to a click command (all default to None)."""
    for option in reversed(OPTIONS):
        command = click_option(option)(command)
    return command


def backend_options(command):
    """Decorator adding the options the backends declare (orchestrator.backends.backend_options),
    each help text led by the backends that take it ("docker: CPU limit.")."""
    from ..backends import backend_options as declared

    for option, backends in reversed(declared().values()):
        command = backend_click_option(option, f"{', '.join(backends)}: ")(command)
    return command


def backend_click_option(option, prefix):
    """The click option of a backend's option, its help led by `prefix` (who takes it: "docker: ")
    and ending with its default."""
    help_ = f"{prefix}{option.help}"
    help_ = help_ if help_.endswith("]") else help_ + "."
    if option.default is not None and option.kind != "flag":
        help_ += f" [default: {option.default}]"
    return click_option(option, help_)
