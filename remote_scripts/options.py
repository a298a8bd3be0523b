"""The training job's options, declared once: train.py's argparse and `orchestrate train`'s click
options are both generated from OPTIONS, so the client and the job cannot drift apart (names,
types, choices, ranges, defaults and help are the same on both sides; tests/test_contract.py
compares the two parsers in both directions).

Torch-free on purpose: the client imports this module without torch. The paths the backends map
(--data, --output, --checkpoint-dir) are not here: each backend chooses them, the user does not.
"""
import math
import os
from dataclasses import dataclass

ARCHS = ("resnet50", "resnet18", "resnet34", "resnet101", "mobilenet_v3_large", "efficientnet_b0")
MODES = ("linear", "head", "full")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
BACKBONE_LR_FACTOR = 0.1  # full mode: a pretrained backbone learns at lr * this, the new head at lr
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1


@dataclass(frozen=True)
class Option:
    """One job flag. kind: int | float | str | choice | flag (a switch, off unless given).

    low/high bound the value; low_open/high_open exclude the bound itself. A default of None means
    "decided by the job at run time", which the help text then explains.
    """
    flag: str
    kind: str
    default: object
    help: str
    choices: tuple = ()
    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False
    metavar: str = None

    @property
    def dest(self):
        """The attribute name in argparse's namespace and click's parameters (--no-hflip: no_hflip)."""
        return self.flag.lstrip("-").replace("-", "_")

    def check(self, value):
        """The problem with `value` as a one-line message, or None when it is acceptable."""
        if value is None or self.kind not in ("int", "float"):
            return None
        if not math.isfinite(value):
            return f"{self.flag} must be finite and {self.describe_range()}"
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if low_ok and high_ok:
            return None
        return f"{self.flag} must be {self.describe_range()}"

    def problem(self, value):
        """The problem with a Python `value` for this option (its kind, choices and range), or None:
        the check of values that come from Python (the SDK's keyword arguments, a recorded spec)
        rather than from argparse or click, which convert text first."""
        if value is None:
            return None
        if self.kind == "flag":
            return None if isinstance(value, bool) else f"{self.flag} is a switch: True or False"
        if self.kind == "choice":
            return None if value in self.choices else f"{self.flag} must be one of {', '.join(self.choices)}"
        if self.kind == "str":
            return self.check(value) if isinstance(value, (str, os.PathLike)) else f"{self.flag} must be a string"
        number_types = (int,) if self.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types):
            return f"{self.flag} must be {'an integer' if self.kind == 'int' else 'a number'}"
        return self.check(value)

    def describe_range(self):
        """'between 16 and 2048', 'at least 1', 'in [0, 1)', 'positive' ..."""
        def number(v):
            return f"{v:g}" if isinstance(v, float) else str(v)
        if self.low is not None and self.high is not None:
            if not self.low_open and not self.high_open:
                return f"between {number(self.low)} and {number(self.high)}"
            return (f"in {'(' if self.low_open else '['}{number(self.low)}, "
                    f"{number(self.high)}{')' if self.high_open else ']'}")
        if self.low is None and self.high is None:
            return "a number"
        if self.low is not None:
            if self.low == 0:
                return "positive" if self.low_open else "zero or more"
            return f"more than {number(self.low)}" if self.low_open else f"at least {number(self.low)}"
        return f"less than {number(self.high)}" if self.high_open else f"at most {number(self.high)}"


OPTIONS = (
    Option("--arch", "choice", "resnet50", "backbone network", choices=ARCHS),
    Option("--weights", "str", "imagenet",
           "initial weights: imagenet (torchvision's published file), none (random init) or the path "
           "of a state_dict file"),
    Option("--mode", "choice", None,
           "linear: frozen backbone, its features computed once, a linear head trained on them; "
           "head: frozen backbone, head trained on augmented images; full: fine-tune everything "
           "(default: full on a GPU, linear on a CPU)", choices=MODES),
    Option("--epochs", "int", 10, "training epochs", low=1),
    Option("--batch-size", "int", 32, "images per step and process", low=1),
    Option("--lr", "float", 1e-3,
           "peak learning rate of the head (AdamW, linear warmup then cosine decay); in full mode a "
           f"pretrained backbone gets lr x {BACKBONE_LR_FACTOR}", low=0, low_open=True),
    Option("--weight-decay", "float", 1e-4, "AdamW weight decay", low=0),
    Option("--label-smoothing", "float", 0.0, "label smoothing of the cross-entropy loss",
           low=0, high=1, high_open=True),
    Option("--balance", "flag", False,
           "weight the loss by inverse class frequency, so small classes count as much as large "
           "ones (imbalanced sets such as crack detection)"),
    Option("--image-size", "int", 224, "the model's input is image-size x image-size pixels",
           low=16, high=2048),
    Option("--no-hflip", "flag", False,
           "no random horizontal flips in augmentation (text, digits, anything not mirror-symmetric)"),
    Option("--val-fraction", "float", DEFAULT_VAL_FRACTION,
           "share of each class held out for validation (early stopping, best epoch)",
           low=0, high=1, high_open=True),
    Option("--test-fraction", "float", DEFAULT_TEST_FRACTION,
           "share of each class held out for the final test metrics", low=0, high=1, high_open=True),
    Option("--seed", "int", 0, "seeds the split, the shuffling and the augmentation", low=0),
    Option("--labels", "str", "folder",
           "where the labels come from: folder (DATA/<label>/**/<image>), filename (the leading letters "
           "of each image's file name, CD7001-220.jpg -> CD) or a .tsv/.csv file inside DATA with a path "
           "and a label column (paths relative to DATA, header row optional)", metavar="SOURCE"),
    Option("--sample-fraction", "float", 1.0,
           "train on this stratified, seeded share of each class's images (a quick try on a big set)",
           low=0, low_open=True, high=1),
    Option("--time-budget", "float", None,
           "stop after the epoch during which the job has run this long (earlier attempts of a "
           "resumed run count); 0: one epoch", low=0, metavar="SECONDS"),
    Option("--patience", "int", 5,
           "stop after this many epochs without a lower validation loss (0: never stop early)", low=0),
    Option("--precision", "choice", "auto",
           "arithmetic of the forward and backward passes; auto: bf16 on GPUs that run it natively "
           "(compute capability 8.0 and newer), fp16 with loss scaling on older GPUs; on CPUs bf16 where "
           "the CPU has it in hardware (AMX, AVX-512 BF16), else fp32; linear mode always computes its "
           "features in fp32",
           choices=PRECISIONS),
    Option("--device", "str", "auto", "auto, cpu, cuda or cuda:N"),
    Option("--workers", "int", None,
           "processes decoding images and threads hashing them (0: in the main process; default: "
           "the CPUs this process may use)", low=0),
    Option("--cache-dir", "str", None,
           "folder of the decoded-image cache, kept across runs and shared by runs on the same data "
           "(default: the user's cache folder, ~/.cache/orchestrate/images)", metavar="DIR"),
    Option("--cache-size-gb", "float", 20.0,
           "size cap of the decoded-image cache; the least recently used entries go first",
           low=0, low_open=True),
)

BY_DEST = {option.dest: option for option in OPTIONS}


def problems(values):
    """One-line problems of the parsed `values` ({dest: value}), checked across options too."""
    found = [message for option in OPTIONS if (message := option.check(values.get(option.dest)))]
    val = DEFAULT_VAL_FRACTION if values.get("val_fraction") is None else values["val_fraction"]
    test = DEFAULT_TEST_FRACTION if values.get("test_fraction") is None else values["test_fraction"]
    if val + test >= 1:
        found.append("--val-fraction and --test-fraction must sum to less than 1")
    if values.get("mode") == "full" and (values.get("batch_size") or BY_DEST["batch_size"].default) < 2:
        found.append("--mode full needs --batch-size 2 or more: BatchNorm cannot train on one image")
    return found


def to_arguments(values):
    """The job's command-line arguments for the options set in `values` ({dest: value}; None and
    False mean unset), in table order, so unset options keep the job's defaults."""
    arguments = []
    for option in OPTIONS:
        value = values.get(option.dest)
        if value is None or value is False:
            continue
        arguments += [option.flag] if option.kind == "flag" else [option.flag, str(value)]
    return arguments


def from_arguments(arguments):
    """The inverse of to_arguments: {dest: value} of the job's command-line arguments, numbers as
    numbers (so 0.01 and 1e-2 are equal; a number that does not parse stays text) and a given flag
    as True. An option this table does not know (a newer job's) is kept under its dest too, with
    the next argument as its value unless another option follows."""
    by_flag = {option.flag: option for option in OPTIONS}
    arguments = list(arguments)
    values = {}
    while arguments:
        flag = arguments.pop(0)
        option = by_flag.get(flag)
        if option is not None:
            takes_value = option.kind != "flag"
        else:
            takes_value = bool(arguments) and not arguments[0].startswith("--")
        dest = option.dest if option is not None else flag.lstrip("-").replace("-", "_")
        values[dest] = _typed(option, arguments.pop(0)) if takes_value and arguments else True
    return values


def given_value(arguments, flag):
    """The value train.py will see for `flag` among the job's `arguments`: the last one given,
    else the table's default (what the backends ask of --weights, --arch, --labels)."""
    option = BY_DEST[flag.lstrip("-").replace("-", "_")]
    return from_arguments(arguments).get(option.dest, option.default)


def _typed(option, text):
    kind = option.kind if option is not None else None
    try:
        return int(text) if kind == "int" else float(text) if kind == "float" else text
    except ValueError:
        return text
