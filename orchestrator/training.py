"""orchestrator.train: start a training run, or a search, on the local, Docker or Azure ML backend.

The options are `orchestrate train`'s, with underscores: the job's own (remote_scripts/options.py
OPTIONS: epochs, image_size, mode...) and the backends' (each backend class's `options`), each
checked by the same rule on both sides, since the CLI's flags are generated from these tables. Everything
is checked before anything starts: the options, the dataset (the job's own scan and split), the
backend; then the run is recorded in the ledger and submitted, and train() returns its Run.

Example:
    >>> import orchestrator
    >>> run = orchestrator.train("./digits", backend="local", epochs=3, weights="none", image_size=32)
    >>> run.wait().metrics["accuracy"]
    0.91
    >>> plan = orchestrator.train("./EuroSAT", compute="gpu-nc12", dry_run=True, export="job.yml")
    >>> print(plan.description)
"""
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Union, overload

from remote_scripts.options import BY_DEST, OPTIONS, Option, problems, to_arguments

from .errors import UsageError, dataset_errors
from .events import ignore, notice
from .plan import Plan

if TYPE_CHECKING:
    from .run import Run

def backend_choices():
    """"auto" and the registered backends' names: what backend= takes."""
    from .backends import BACKENDS

    return ("auto", *BACKENDS)


# train()'s own arguments that take a value of a kind, with their rule (the CLI's flags too).
TRIALS = Option("--trials", "int", None, "with --search: at most this many trials", low=1)
OWN_ARGUMENTS = {"name": Option("--name", "str", None, ""), "runs_dir": Option("--runs-dir", "str", None, ""),
                 "space": Option("--space", "str", None, ""), "search": Option("--search", "flag", None, ""),
                 "trials": TRIALS}


@overload
def train(data: Union[str, Path], *, dry_run: Literal[False] = False, export: None = None,
          **options: Any) -> "Run": ...


@overload
def train(data: Union[str, Path], *, dry_run: Literal[True], export: Union[str, Path, None] = None,
          **options: Any) -> Plan: ...


@overload
def train(data: Union[str, Path], *, dry_run: bool = False, export: Union[str, Path],
          **options: Any) -> Plan: ...


def train(data: Union[str, Path], *, backend: str = "auto", name: Optional[str] = None,
          runs_dir: Union[str, Path] = "runs", search: bool = False, trials: Optional[int] = None,
          space: Union[str, Path, None] = None, dry_run: bool = False, export: Union[str, Path, None] = None,
          approve: Optional[Callable[[str], bool]] = None, on_event: Optional[Callable[[dict], None]] = None,
          quantize: Optional[str] = None, **options) -> Union["Run", Plan]:
    """Start training a classifier on `data` and return its Run once the job is submitted.

    data: a folder with one sub-folder of images per label (or see labels=), a packed dataset
      (orchestrator.data.pack), or such a dataset at s3://BUCKET/PREFIX or az://ACCOUNT/CONTAINER/PREFIX
      (packed into the cache folder first).
    backend: "local", "docker", "azure" or "auto" (the backend of an option only it takes, else
      azure when a workspace is configured, else docker when an engine answers, else local).
    search: try several configurations, cheapest first, each a run of its own (`trials`: at most
      this many; `space`: a YAML file of the configurations); time_budget= is the whole search's.
    dry_run: return a Plan of the job instead, from a backend that has a dry run (auto: azure): the
      Azure ML job (export=PATH writes its YAML); nothing is created.
    approve: approve("create compute NAME?") is asked before a backend creates what costs (an Azure
      compute cluster; return False to stop); None: create it without asking.
    on_event: receives progress as event dicts: uploads, downloads, notices ({"type": "notice"}).
    quantize: "int8": once the run completes, Run.wait() writes its int8 model on this machine from
      the dataset it has (orchestrator.quantize, gate included; the result: `run.quantized`).
    options: `orchestrate train`'s options with underscores: epochs=, image_size=, mode=, weights=,
      compute=, nodes=, gpus=... (`orchestrate train --help` lists them; the backends' `options`
      and remote_scripts.options.OPTIONS declare them).

    Raises UsageError for an unknown or out-of-range option (naming it), DatasetError for data that
    cannot be trained on, ServiceError when Azure, storage or Docker refuses; all before a job starts.

    Example:
        >>> run = orchestrator.train("./flowers", backend="docker", mode="full", epochs=5)
        >>> run.id
        'flowers-20261207-101500-ab12'
    """
    from . import runner
    from .backends import get_backend
    from .dataset.sources import is_uri
    from .ledger import Ledger
    from .run import Run
    from .weights import fetch_imagenet_weights, wanted_imagenet_arch

    on_event = on_event or ignore
    if backend not in backend_choices():
        raise UsageError(f"backend={backend!r}: choose one of {', '.join(backend_choices())}")
    for key, value in (("name", name), ("runs_dir", runs_dir), ("space", space), ("search", search),
                       ("trials", trials)):
        problem = OWN_ARGUMENTS[key].problem(value)
        if problem:
            raise UsageError(f"{key}={value!r}: {problem}")
    values, backend_options = checked_options(options)
    if quantize not in (None, "int8"):
        raise UsageError(f"quantize={quantize!r}: the one kind is \"int8\"")
    if is_uri(str(data)):  # trained on as its packed copy in the cache folder, on every backend
        from .data import pack
        from .dataset.sources import open_source

        name = name or open_source(str(data)).name
        data = pack(str(data), labels=values["labels"], on_event=on_event).out_dir
    data = Path(data)
    validate_dataset(data, values)
    trial_list = search_trials(search, values, space, trials, backend_options)
    name = name or data.resolve().name
    spec = runner.make_spec(data, to_arguments(values), backend_options, name, runs_dir, trials=trial_list,
                            quantize=quantize)
    if dry_run or export:
        return plan(backend, spec, export, on_event)
    chosen, line = choose_backend(backend, spec.backend_options)
    if line:
        on_event(notice(line))
    engine = get_backend(chosen, on_event=on_event, approve=approve)
    if engine.needs_client_weights(spec):
        for train_args in {wanted_imagenet_arch(args): args for args in job_arguments(spec)}.values():  # one per arch
            fetch_imagenet_weights(train_args, on_event)
    ledger = Ledger()
    runner.start(engine, ledger, spec, name)
    return Run(ledger.get(spec.run_id), ledger)


def checked_options(options):
    """({job option dest: value or None}, {backend option: value}) of train()'s `options`, each
    value checked by its table's rule (the job's OPTIONS, the backends' options); UsageError naming
    the first bad one."""
    from .backends import backend_options, setting_flags

    backend_table = {dest: option for dest, (option, _) in backend_options().items()}
    settings = setting_flags()  # strings each
    values = {option.dest: None for option in OPTIONS}
    given = {}
    for key, value in options.items():
        option = BY_DEST.get(key) or backend_table.get(key)
        if option is None and key not in settings:
            raise UsageError(f"train() got an unknown option {key!r} (the options of `orchestrate train --help`, "
                             "with underscores)")
        if value is None:
            continue
        problem = option.problem(value) if option else (None if isinstance(value, str) else "must be a string")
        if problem:
            raise UsageError(f"{key}={value!r}: {problem}")
        if key in values:
            values[key] = str(value) if option.kind == "str" else value
        elif value is not False:
            given[key] = value
    found = problems(values)  # the rules across options
    if found:
        raise UsageError("; ".join(found))
    return values, given


def validate_dataset(data, values):
    """Reject unusable data here, in one line, before any job starts or any byte is uploaded.

    Runs the job's own scan, sample and split (no image is decoded), so the checks and their
    messages are the job's. A `labels` table is handed to the job as its path inside DATA (the
    only folder a container or an Azure ML job sees), so `values` is updated with it.
    """
    from remote_scripts import folder_dataset as fd
    from remote_scripts import packed_dataset

    def given(name):
        return BY_DEST[name].default if values[name] is None else values[name]

    val, test, labels = given("val_fraction"), given("test_fraction"), given("labels")
    with dataset_errors():
        if packed_dataset.is_packed(str(data)):  # its index holds the labels: the job does not read --labels again
            found = packed_dataset.PackedDataset(str(data)).scan()
        else:
            labels = fd.label_source_for_job(str(data), labels)
            if values["labels"] is not None:
                values["labels"] = labels
            found = fd.scan(str(data), labels=labels)
        samples = fd.sample_fraction(found.samples, given("sample_fraction"), given("seed"), val, test)
        fd.stratified_split(samples, found.classes, val, test, seed=0)


def choose_backend(name, options):
    """(backend name, the line to tell the user about the setup it found, or None).

    What only one backend takes means that backend (forced_backend); else auto asks each backend in
    turn (backends.auto_order: azure when a workspace is configured, docker when an engine answers,
    else local). A named backend checks its setup first: azure without a workspace is a one-line
    error naming `orchestrate init`, before anything is created or uploaded.
    """
    from .backends import auto_order, backend_class

    name = forced_backend(name, options)
    if name != "auto":
        return name, backend_class(name).auto_choice(options, named=True) or None
    for candidate in auto_order():
        line = backend_class(candidate).auto_choice(options)
        if line is not None:
            return candidate, line or None
    raise UsageError("no backend takes this job here: name one with --backend")


def forced_backend(name, options):
    """`name`, or for "auto" the backend whose own options (backends.exclusive_options) are given;
    UsageError naming them when they are another backend's."""
    from .backends import backend_class, exclusive_options

    owners = {}  # backend -> the flags given that only it takes
    for dest, (flag, owner) in exclusive_options().items():
        if options.get(dest) is not None:
            owners.setdefault(owner, []).append(flag)
    said = {owner: f"{', '.join(flags)}: {backend_class(owner).title or owner} option(s)"
            for owner, flags in owners.items()}
    if name == "auto" and len(owners) > 1:
        raise UsageError(f"{'; '.join(said.values())}: options of different backends; keep one backend's")
    if name == "auto" and owners:
        name = next(iter(owners))
    for owner in owners:
        if owner != name:
            raise UsageError(f"{said[owner]}, which --backend {name} has not; drop them or use --backend {owner}")
    return name


def plan(name, spec, export, on_event):
    """The Plan of `spec` by its backend's dry run (nothing is created, no cloud call), its job written
    to `export` when given; auto: the backend the options name, else the first with a dry run (azure)."""
    from .backends import auto_order, backend_class

    chosen = forced_backend(name, spec.backend_options)
    planners = [candidate for candidate in auto_order() if backend_class(candidate).plan is not None]
    if chosen == "auto" and planners:
        chosen = planners[0]
    if chosen not in planners:
        which = f"backend {chosen}" if chosen == name else f"the options given mean backend {chosen}, which"
        raise UsageError(f"{which} has no dry run: --dry-run and --export describe a job without starting "
                         f"it; use them with --backend {' or --backend '.join(planners)}")
    return backend_class(chosen).plan(spec, export, on_event)


def search_trials(search, values, space_file, max_trials, backend_options):
    """The trials of a search (orchestrator.search.plan_trials), None without `search`."""
    if not search:
        if space_file is not None or max_trials is not None:
            raise UsageError("--trials and --space choose the trials of a search: add --search")
        if "max_concurrent_trials" in backend_options or "early_termination" in backend_options:
            raise UsageError("--max-concurrent-trials and --early-termination set up a search's sweep job: add --search")
        return None
    if backend_options.get("nproc", 1) > 1:
        raise UsageError("--search runs its trials one after another in one process: drop --nproc")
    if values["val_fraction"] == 0:
        raise UsageError("--search ranks its trials by validation accuracy: --val-fraction must be above 0")
    from .search import plan_trials

    return plan_trials(values, space_file, max_trials)


def job_arguments(spec):
    """The train.py arguments of each configuration `spec` runs: its own, or each trial's."""
    if spec.trials is None:
        return [spec.train_args]
    return [spec.train_args + to_arguments(trial) for trial in spec.trials]
