"""Build the Azure ML sweep job of a search (`orchestrate train --search --backend azure`).

One trial of the search is one sweep trial: `search.py --trials JSON --trial K` runs trial K alone,
exactly as train.py would run it with the trial's options over the shared ones. The sweep's search
space is therefore a single choice, `trial` in 1..N, sampled by grid (each trial exactly once, in
no particular order), and the trial list itself travels in the command line, so the job needs no
file of its own and the exported YAML says everything.

Choices, and why:
- Concurrency: backend option `max_concurrent_trials`, default min(N, DEFAULT_CONCURRENCY = 4).
  One trial is one node (single process; a search spreads trials, not one trial over GPUs), so
  concurrency is the cluster's node count: a new cluster is created able to scale to it; an
  existing smaller cluster runs that many at once and queues the rest (prepare says so).
- Timeout: the search's --time-budget B is the whole search's. The sweep's `timeout` is
  B + SWEEP_GRACE (30 min): unlike a local search, an Azure search first waits for nodes to scale
  up from zero and, on first use, for the image to build; without grace a short budget would
  end canceled before its first trial trained. Every trial also receives --time-budget B among
  the shared arguments (it stops itself cleanly after the epoch that reaches it) and a hard
  `trial_timeout` of B + TRIAL_GRACE (10 min: its test evaluation and ONNX export). Both are
  capped by --max-hours. Without a budget: timeout = --max-hours (24 h by default), no trial cap.
- Early termination: MedianStoppingPolicy(evaluation_interval=1, delay_evaluation=2) by default
  (backend option `early_termination`: median | bandit | none). Median stopping is the rule the
  local search applies (search.py: a trial trailing the median of the others at the same epoch,
  from epoch 2 on), so both backends prune alike, and it has no slack factor to tune for a space
  whose trials differ as much as linear probes and full fine-tuning. Azure applies it to the
  primary metric (val_accuracy, logged each epoch) where search.py compares validation losses.
- Outputs: each trial writes to its own folder, orchestrate/runs/<run>/trials/${{name}}/model
  (and /checkpoints): `${{name}}` is the server-side expression of the trial job's own name, so
  trials never overwrite each other and a restarted trial resumes from its own checkpoints.
"""
import math
from dataclasses import dataclass

from remote_scripts.options import given_value
from remote_scripts.search_space import PRIMARY_METRIC, describe as describe_trial, trial_id, trials_argument

from ...errors import UsageError
from .job import (DEFAULT_DATASTORE, JobPlan, check_export_path, command_job, datastore_uri, describe,
                  export_yaml, plan_from_spec)
from .seam import job_validation_errors, load_sdk

DEFAULT_CONCURRENCY = 4
SWEEP_GRACE = 1800  # seconds on top of the budget for the whole sweep (node scale-up, image build)
TRIAL_GRACE = 600   # seconds on top of the budget for one trial (its evaluation and export)
POLICIES = ("median", "bandit", "none")
BANDIT_SLACK = 0.1
GOAL = "maximize"
TRIAL_BINDING = "--trial ${{inputs.trial}}"  # the SDK writes it ${{search_space.trial}} in the sweep


def trial_prefix(run_id, trial_job, output):
    """Blob prefix of one output (model, checkpoints) of one trial job of a search."""
    return f"orchestrate/runs/{run_id}/trials/{trial_job}/{output}"


@dataclass
class SweepPlan:
    """A search on Azure ML: the trials' common JobPlan (one node) and the sweep's settings."""
    job: JobPlan
    trials: list
    budget_seconds: float = None
    max_concurrent: int = DEFAULT_CONCURRENCY
    policy: str = "median"

    @property
    def name(self):
        return self.job.name

    @property
    def run_id(self):
        return self.job.run_id

    @property
    def timeout_seconds(self):
        """The whole sweep's limit: the budget plus SWEEP_GRACE, at most --max-hours."""
        cap = self.job.timeout_seconds
        if self.budget_seconds is None:
            return cap
        return min(int(math.ceil(self.budget_seconds)) + SWEEP_GRACE, cap)

    @property
    def trial_timeout_seconds(self):
        """One trial's hard limit (None without a budget: the sweep's timeout bounds it)."""
        if self.budget_seconds is None:
            return None
        return min(int(math.ceil(self.budget_seconds)) + TRIAL_GRACE, self.job.timeout_seconds)

    def command(self):
        """The trial's command line (search.py --trials JSON --trial ${{inputs.trial}} ...)."""
        return self.job.command(script="search.py", script_args=["--trials", trials_argument(self.trials)],
                                bindings=TRIAL_BINDING)

    def trial_command(self):
        """The command as the sweep job holds it (the SDK turns the input binding of `trial`
        into the search space's): what dry runs show and the exported YAML says."""
        return self.command().replace(TRIAL_BINDING, "--trial ${{search_space.trial}}")

    def output_uri(self, output):
        return datastore_uri(self.job.datastore, trial_prefix(self.run_id, "${{name}}", output))


def is_search(spec):
    """Whether `spec` is a search (a sweep job on Azure ML) rather than one training run."""
    return bool(spec.trials)


def sweep_plan_from_spec(spec, datastore=DEFAULT_DATASTORE):
    """A SweepPlan from a search JobSpec (spec.trials set): the command job's plan (compute,
    low_priority, experiment, max_hours, weights, packing: plan_from_spec), one node per trial,
    and the backend options max_concurrent_trials and early_termination."""
    if not spec.trials:
        raise UsageError("a sweep job needs the trials of a search")
    options = spec.backend_options
    if options.get("nodes") is not None and int(options["nodes"]) != 1:
        raise UsageError("--nodes applies to one training run: a search runs each trial on one node "
                        "(use max_concurrent_trials for trials at once)")
    job = plan_from_spec(spec, datastore=datastore)
    trials = [dict(trial) for trial in spec.trials]
    budget = given_value(job.train_args, "--time-budget")
    budget = float(budget) if budget is not None else None
    if budget is not None and not budget > 0:
        raise UsageError("--time-budget must be more than 0 seconds")
    concurrent = options.get("max_concurrent_trials")
    if concurrent is None:
        concurrent = min(len(trials), DEFAULT_CONCURRENCY)
    try:
        concurrent = int(concurrent)
    except (TypeError, ValueError):
        raise UsageError(f"max_concurrent_trials must be a whole number, not {concurrent!r}") from None
    if concurrent < 1:
        raise UsageError("max_concurrent_trials must be at least 1")
    policy = (options.get("early_termination") or "median").lower()
    if policy not in POLICIES:
        raise UsageError(f"early_termination {policy!r}: choose one of {', '.join(POLICIES)}")
    return SweepPlan(job=job, trials=trials, budget_seconds=budget,
                     max_concurrent=min(concurrent, len(trials)), policy=policy)


def termination_policy(policy):
    """The azure-ai-ml early termination policy entity of `policy` (None for "none")."""
    from azure.ai.ml.sweep import BanditPolicy, MedianStoppingPolicy

    if policy == "median":
        return MedianStoppingPolicy(evaluation_interval=1, delay_evaluation=2)
    if policy == "bandit":
        return BanditPolicy(slack_factor=BANDIT_SLACK, evaluation_interval=1, delay_evaluation=2)
    return None


def build_sweep(plan):
    """The real azure-ai-ml Sweep node of `plan` (a SweepJob once submitted), validated offline.

    The trial is the training job's Command (job.command_job: code, environment, data and weights
    inputs, shm size) with search.py's command line, a literal input `trial` that the search
    space replaces by Choice(1..N), no distribution and one node."""
    from azure.ai.ml.sweep import Choice

    from .job import sdk_validation_errors

    load_sdk()
    job = plan.job
    trial = command_job(job, plan.command(), lambda output: trial_prefix(plan.run_id, "${{name}}", output),
                        extra_inputs={"trial": 1}, timeout=plan.trial_timeout_seconds or job.timeout_seconds)
    with sdk_validation_errors():
        sweep = trial(trial=Choice(values=list(range(1, len(plan.trials) + 1)))).sweep(
            primary_metric=PRIMARY_METRIC, goal=GOAL, sampling_algorithm="grid", compute=job.compute.cluster,
            max_total_trials=len(plan.trials), max_concurrent_trials=plan.max_concurrent,
            timeout=plan.timeout_seconds, trial_timeout=plan.trial_timeout_seconds,
            early_termination_policy=termination_policy(plan.policy))
        # the node keeps none of the command's identity: the sweep job is named after the run
        sweep.name, sweep.display_name, sweep.experiment_name = job.name, job.run_id, job.experiment
        sweep.description = "orchestrate: image classifier search (one trial per configuration, ONNX output)"
        sweep.tags = {"orchestrate.run_id": job.run_id, "orchestrate.kind": "search"}
    errors = job_validation_errors(sweep)
    if errors is not None:
        raise UsageError(f"invalid Azure ML sweep job: {errors}")
    return sweep


def policy_text(policy):
    if policy == "median":
        return ("median stopping from the 2nd epoch, checked every epoch (a trial whose val_accuracy trails "
                "the median of the others' running averages is canceled)")
    if policy == "bandit":
        return f"bandit, slack factor {BANDIT_SLACK:g}, from the 2nd epoch, checked every epoch"
    return "none (every trial runs to its end)"


def describe_sweep(plan, settings=None):
    """What a submit of the search `plan` would create and run: the training job's plan with the
    trials, concurrency, limits, policy and trial command in place of nodes/timeout/command."""
    n = len(plan.trials)
    budget = ("no --time-budget" if plan.budget_seconds is None
              else f"--time-budget {plan.budget_seconds:g} s for the whole search")
    timeout = [f"timeout:     sweep {_duration(plan.timeout_seconds)} ({budget}"
               + (f" + {SWEEP_GRACE // 60} min for nodes and image" if plan.budget_seconds is not None else
                  f"; --max-hours {plan.job.max_hours:g}") + "), then the service cancels the remaining trials"]
    if plan.trial_timeout_seconds is not None:
        timeout.append(f"             each trial at most {_duration(plan.trial_timeout_seconds)} (it stops itself "
                       f"after the epoch that reaches the budget)")
    gpus = plan.job.compute.size.gpus
    nodes = [f"nodes:       1 per trial, 1 process (a trial uses 1 of the node's {gpus} GPUs)" if gpus > 1 else
             "nodes:       1 per trial, 1 process"]
    search = [f"search:      sweep job, {n} trial(s) (grid over trial = 1..{n}, each once), up to "
              f"{plan.max_concurrent} at once (max_concurrent_trials)",
              f"objective:   {GOAL} {PRIMARY_METRIC} (logged by every trial each epoch through MLflow)",
              f"early stop:  {policy_text(plan.policy)}",
              *[f"  {trial_id(i)}  {describe_trial(t)}" for i, t in enumerate(plan.trials, 1)]]
    outputs = [f"outputs:     model -> {plan.output_uri('model')} (per trial)",
               f"             checkpoints -> {plan.output_uri('checkpoints')}",
               "             the best trial's model is downloaded, with search.json (every trial's results)"]
    return describe(plan.job, settings, replace={
        "nodes": nodes, "timeout": timeout, "outputs": outputs, "search": search,
        "command": [f"command:     {plan.trial_command()}"],
    })


def _duration(seconds):
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return " ".join(part for part in (f"{hours} h" if hours else "", f"{minutes} min" if minutes else "",
                                      f"{secs} s" if secs else "") if part) or "0 s"


def export_sweep_yaml(plan, path):
    """Write the sweep job of `plan` as Azure ML YAML (`az ml job create -f`, azure.ai.ml.load_job
    gives a SweepJob back); `path` is checked first."""
    check_export_path(path)
    export_yaml(build_sweep(plan), path)
