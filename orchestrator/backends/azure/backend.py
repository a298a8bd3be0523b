"""The Azure ML backend: the job contract on an AmlCompute cluster.

prepare: create the cluster when missing (quota-checked) and upload the dataset to the workspace's
default datastore (only changed files are sent: storage.blob). submit: the command job of
job.py, or, for a search (spec.trials set), the sweep job of sweep_job.py: one trial per
configuration, the same dataset upload. log_lines/status/cancel/download: by the Azure ML job name
(tailer.py, seam.py; a search's trials and best model: sweep_results.py).

Why runs/<id>/azure.json (RunFolder's backend state): `orchestrate logs/status/download RUN` may run
in another process, directory or shell than the submit; the file holds the workspace coordinates and
the datastore of the run (no secrets), so they work without the flags the run was started with.

What the backend does on the client's side (cluster, upload, submit, the job's service status) goes
to `on_event` as event dicts (orchestrator.events: notice, transfer); it never prints.

backend_options (from `orchestrate train`): compute (alias or size; default gpu-t4), nodes,
low_priority, experiment, max_hours (the job's timeout; default 24), and the workspace flags subscription_id, resource_group,
workspace_name, profile. A search also reads max_concurrent_trials (default min(trials, 4)) and
early_termination (median | bandit | none; default median): see sweep_job.py.
"""
import time

from ...errors import UsageError
from ...events import ignore, notice
from ...run_folder import RunFolder
from ..base import FAILED, SCORE, TERMINAL, TRAIN, Backend, BackendOption, RunRef
from .settings import PROFILE_FIELDS, WORKSPACE_FLAGS, Settings, load_settings, workspace_line


class AzureBackend(Backend):
    """Runs the job contract on an Azure ML cluster; `on_event` receives its progress as event dicts,
    approve("create compute NAME?") is asked before a missing cluster is created (None: created
    without asking).

    Example:
        >>> backend = AzureBackend(on_event=print, approve=lambda question: True)
        >>> backend.prepare(spec); run = backend.submit(spec)
    """
    name = "azure"
    title = "Azure ML"
    setting_flags = WORKSPACE_FLAGS  # the workspace: resolved by settings (flags > env > profile)
    poll_seconds = 15.0  # a caller following with a deadline asks this often (each ask: a few service calls)
    kinds = frozenset({TRAIN, SCORE})  # a score job: a one-step parallel pipeline (score_job.py)
    not_resumable = "Azure ML restarts a preempted job by itself, from the run's checkpoint output"
    # The workspace (subscription, resource group, workspace, profile) is settings' (flags > env >
    # profile), not a job option; these are the job's. Defaults are applied by job.plan_from_spec.
    options = (
        BackendOption("--compute", "str", None, "compute alias or VM size (see 'orchestrate compute sizes') "
                      "[default: gpu-t4]"),
        BackendOption("--nodes", "int", None, "nodes; one process per GPU on each [default: 1]", low=1),
        BackendOption("--low-priority", "flag", None, "low-priority nodes (cheaper, preemptible; the job resumes "
                      "from its checkpoint)"),
        BackendOption("--experiment", "str", None, "experiment name [default: orchestrate]"),
        BackendOption("--max-hours", "float", None, "the job's timeout; the service cancels it after this many "
                      "hours [default: 24]", low=0, low_open=True),
        BackendOption("--weights-upload", "flag", None, "send the ImageNet weights with the job, for workspaces "
                      "without outbound access (a --weights file is always sent)"),
        BackendOption("--no-pack", "flag", None, "upload the image files one blob each (mounted by the job) "
                      "instead of packed shards (downloaded by the job; see `orchestrate data pack`)"),
        BackendOption("--max-concurrent-trials", "int", None, "with --search: trials running at once, one node "
                      "each [default: up to 4]", low=1),
        BackendOption("--early-termination", "choice", None, "with --search: the sweep's policy for trials that "
                      "fall behind (median: the rule the local search applies too) [default: median]",
                      choices=("median", "bandit", "none")),
        BackendOption("--register", "flag", None, "when the run completes, register its ONNX model (labels, test "
                      "metrics as tags) and its dataset as Azure ML assets (later: orchestrate register RUN)"),
    )

    def __init__(self, seam_factory=None, sleep=time.sleep, on_event=None, clock=time.monotonic, approve=None):
        # approve: called once the plan of a cluster to create is shown, before it is created (the
        # CLI's confirmation on a terminal: it raises to stop); None creates without asking.
        super().__init__(on_event, approve)
        if seam_factory is None:
            from .seam import AzureSeam as seam_factory
        self.seam_factory = seam_factory
        self.sleep = sleep
        self.clock = clock
        self._datastores = {}  # run_id -> datastore resolved by prepare()
        self._score_plans = {}  # run_id -> a score job's plan, its datastore resolved by prepare()
        self._said = {}  # run_id -> the job status last said: a caller polling log_lines hears each change once

    @classmethod
    def auto_choice(cls, options, named=False):
        """"auto" runs the job on Azure ML when a workspace is configured (the line names it and where
        it came from); named without one: the one-line error naming `orchestrate init`."""
        return workspace_line(options, required=named)

    @classmethod
    def plan(cls, spec, export=None, on_event=ignore):
        """`--dry-run [--export FILE]`: what a submit would create and run (dry_run below)."""
        return dry_run(spec, export, on_event)

    def _notice(self, message):
        self.on_event(notice(message))

    def needs_client_weights(self, spec):
        """Only with --weights-upload: else the job downloads the ImageNet weights itself."""
        return bool(spec.backend_options.get("weights_upload"))

    # submit side --------------------------------------------------------------------------
    def _spec_seam(self, spec):
        settings = _spec_settings(spec)
        return self.seam_factory(settings.require("subscription_id", "resource_group", "workspace_name"))

    def prepare(self, spec):
        if spec.kind == SCORE:
            return self._prepare_score(spec)
        from remote_scripts.options import given_value

        from .job import dataset_prefix
        from .provision import ensure_compute
        from .seam import azure_errors

        plan, _ = _build(spec)  # an invalid job fails before anything is created or uploaded
        seam = self._spec_seam(spec)
        with azure_errors():
            # storage first: a refused connection string or datastore fails before a cluster exists
            datastore = seam.default_datastore()
            container = seam.container_client(datastore)
            ensure_compute(seam, plan.compute, on_event=self.on_event, max_nodes=self._nodes_needed(seam, spec, plan),
                           low_priority=plan.low_priority, approve=self.approve)
        if plan.packed:  # shards, content-addressed: see storage/packed_blob.py
            from ...storage.packed_blob import pack_and_upload

            _, result = pack_and_upload(spec.data, dataset_prefix(spec.data, packed=True), lambda: container,
                                        labels=given_value(spec.train_args, "--labels"), on_event=self.on_event)
            self._notice(f"dataset: {result.shards_sent} shard(s) uploaded ({result.bytes_sent / 1e6:.1f} MB), "
                         f"{result.shards_skipped} unchanged")
        else:
            from ...storage.blob import upload_folder

            result = upload_folder(spec.data, dataset_prefix(spec.data), lambda: container,
                                   labels=given_value(spec.train_args, "--labels"), on_event=self.on_event)
            self._notice(f"dataset: {result.files_sent} file(s) uploaded, {result.files_skipped} unchanged")
        self._datastores[spec.run_id] = datastore

    def _prepare_score(self, spec):
        """A score job: its data's datastore found (spec.score records it), the cluster created."""
        from .score_job import plan_from_params, plan_params, prepare_score

        plan, datastore = prepare_score(self._spec_seam(spec), plan_from_params(spec.run_id, spec.score),
                                        self.on_event, self.approve)
        spec.score = plan_params(plan)
        self._score_plans[spec.run_id] = plan
        self._datastores[spec.run_id] = datastore
        return plan

    def _nodes_needed(self, seam, spec, plan):
        """The nodes the cluster must scale to: the job's; for a search, one per concurrent trial,
        except that an existing smaller cluster is used as it is (the other trials queue)."""
        if not spec.trials:
            return plan.nodes
        from .sweep_job import sweep_plan_from_spec

        wanted = sweep_plan_from_spec(spec).max_concurrent
        existing = seam.get_compute(plan.compute.cluster)
        have = (existing or {}).get("max_instances") or 0
        if existing and existing.get("state") != "Failed" and have < wanted:
            self._notice(f"compute {plan.compute.cluster} scales to {have} node(s): {have} of the "
                         f"{wanted} concurrent trials run at once, the others queue")
            return have
        return wanted

    def planned_remote_id(self, spec):
        """The job name, known before the submit (= the run id): the ledger holds it even when
        the submit is interrupted, so `status`/`cancel` find a job the service did create."""
        from .job import job_name

        return job_name(spec.run_id)

    def submit(self, spec):
        """Record the run's Azure coordinates (runs/<id>/azure.json), then submit the job.

        The record comes first: Ctrl-C or an error during the long create_or_update (code upload,
        image definition) leaves a run whose job `status`, `cancel` and `logs` can still find.
        The seam's submit is get-then-create, so a retry never makes a second job.
        """
        from .seam import azure_errors

        seam = self._spec_seam(spec)
        with azure_errors():
            datastore = self._datastores.get(spec.run_id) or seam.default_datastore()
            if spec.kind == SCORE:
                from .score_job import build_score_job, score_prefix

                plan = self._score_plans.get(spec.run_id) or self._prepare_score(spec)
                job = build_score_job(plan)
            else:
                plan, job = _build(spec, datastore=datastore["name"])
        state = {"job": plan.name, "studio_url": None, "compute": plan.compute.cluster,
                 "datastore": datastore, "workspace": seam.settings.public()}
        if spec.kind == SCORE:
            state.update(kind=SCORE, outputs={"predictions": score_prefix(spec.run_id)})
        if spec.trials:  # what download and log_lines need to know of the search, spec or not
            from .sweep_job import sweep_plan_from_spec

            sweep = sweep_plan_from_spec(spec, datastore=datastore["name"])
            state["search"] = {"trials": sweep.trials, "budget_seconds": sweep.budget_seconds,
                               "timeout_seconds": sweep.timeout_seconds,
                               "trial_timeout_seconds": sweep.trial_timeout_seconds}
        folder = RunFolder(spec.run_dir)
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.write_backend_state(state)
        with azure_errors():
            submitted = seam.submit(job)
        folder.update_backend_state(studio_url=submitted["studio_url"])
        again = "" if submitted.get("created", True) else " (already submitted: not created again)"
        self._notice(f"Azure ML job {submitted['name']}{again}: {submitted['studio_url']}")
        return RunRef(spec.run_id, self.name, spec.run_dir, remote_id=submitted["name"])

    # run side -----------------------------------------------------------------------------
    def _run_state(self, run):
        folder = RunFolder(run.run_dir)
        state = folder.backend_state()
        if state is None:
            raise UsageError(f"{folder.backend_state_path} is missing or unreadable: "
                             f"cannot find the Azure ML job of run {run.run_id}")
        return state

    def _run_seam(self, run):
        """A seam on the run's workspace; the storage secret (if any) comes from the env again."""
        state = self._run_state(run)
        secret = load_settings().storage_connection_string
        return self.seam_factory(Settings(**state["workspace"], storage_connection_string=secret))

    # optional capabilities of a backend (base.Backend.cost, .register) -----------------------
    def cost(self, record):
        """The cost estimate of an Azure run (assets.cost_estimate): the nodes of its own record x
        the time Azure ML's run history says they ran (+ the idle minutes before scale-down) x the
        size's hourly price. The price and an ended run's times are cached in azure.json; no
        reachable workspace is a reason in the estimate, never an error."""
        from .assets import cost_estimate

        state = RunFolder(record.run_dir).backend_state()
        if state is None:
            return {"error": "azure.json is missing"}
        return cost_estimate(record, state, seam_factory=lambda: self._run_seam(RunRef.of(record)))

    def register(self, record, model_name=None, data_name=None):
        """The run's model output as an Azure ML model asset (labels and test metrics as tags; a
        search's: its best trial's) and its dataset as a data asset (assets.register_run)."""
        from .assets import register_run
        from .seam import azure_errors

        run = RunRef.of(record)
        seam, state = self._run_seam(run), self._run_state(run)
        with azure_errors():
            return register_run(seam, record, state, model_name, data_name)

    def log_lines(self, run, cursor=0, follow=True):
        """The job's rank-0 log; says each status change, what a job waits for (every minute of an
        unchanged waiting status; the cluster's state only when Queued, since only then are nodes
        what it waits for), a restarted attempt, and a failure's code, message and where the full
        logs are."""
        from .seam import azure_errors, terminal_statuses
        from .tailer import WAITING, tail

        seam = self._run_seam(run)
        state = self._run_state(run)
        seen = []

        def on_status(status):
            seen.append(status)
            if self._said.get(run.run_id) == status:
                return
            self._said[run.run_id] = status
            self._notice(f"Azure ML job: {status}{STATUS_NOTES.get(status, '')}")
            if status in STOPPED:
                self._notice(f"  following stops here (azure-ai-ml counts {status} as an end); the job "
                             f"may recover: `orchestrate status {run.run_id}`, `orchestrate logs {run.run_id}`")

        def on_wait(status, seconds):
            # the cluster is what a Queued job waits for; a Preparing one waits for its image
            line = f"Azure ML job: {status} for {int(seconds)} s: {WAITING.get(status, 'still waiting')}"
            if status == "Queued":
                line += "; " + self._why_waiting(seam, state.get("compute"))
            self._notice(line)

        with azure_errors():
            if state.get("kind") == SCORE:  # a parallel pipeline: no log of its own to tail, its status
                yield from self._follow_status(seam, run, follow, on_status)
            elif state.get("search"):
                from .sweep_results import follow_sweep

                def failure():
                    error = seam.job_error(run.remote_id)
                    return f"{error['code'] or 'Error'}: {error['message']}" if error else None

                yield from follow_sweep(seam, seam.container_client(state["datastore"]), state, run.run_id,
                                        cursor, follow, sleep=self.sleep, clock=self.clock, on_status=on_status,
                                        on_wait=on_wait, stop=terminal_statuses(), failure=failure)
            else:
                yield from tail(seam, run.remote_id, cursor, follow, sleep=self.sleep,
                                on_status=on_status, on_wait=on_wait,
                                on_restart=lambda: self._notice("Azure ML job: a new attempt started "
                                                                "(its log follows)"),
                                stop=terminal_statuses(), clock=self.clock)
            if seen and seen[-1] == "Failed":
                for line in self._failure_lines(seam, run, state):
                    self._notice(line)

    def _follow_status(self, seam, run, follow, on_status, poll=(5.0, 30.0)):
        """Follow a job by its status alone, each change said (on_status), polling every poll[0]
        seconds, backing off to poll[1] while nothing changes; yields no line."""
        from .seam import terminal_statuses
        from .tailer import map_status

        stop, last, delay = terminal_statuses(), None, poll[0]
        while True:
            status = seam.job_status(run.remote_id)
            if status != last:
                on_status(status)
                last, delay = status, poll[0]
            if not follow or map_status(status) in TERMINAL or status in stop:
                return
            self.sleep(delay)
            delay = min(delay * 1.5, poll[1])
        yield  # a generator, as log_lines is

    def error(self, run):
        """The service's error of a failed job ("code: message"; run history's RunDetails.error)."""
        from .seam import azure_errors

        with azure_errors():
            error = self._run_seam(run).job_error(run.remote_id)
        return f"{error['code'] or 'Error'}: {error['message']}" if error else None

    @staticmethod
    def _why_waiting(seam, compute):
        """One line from the cluster's compute GET: allocation state, nodes, errors."""
        if not compute:
            return "the cluster of the run is unknown"
        c = seam.compute_state(compute)
        nodes = ", ".join(f"{n} {k}" for k, v in sorted(c["nodes"].items()) for n in [v])
        line = (f"compute {compute}: {c['allocation'] or 'unknown'} allocation, "
                f"{c['current'] or 0} of {c['target'] or 0} target node(s)"
                + (f" ({nodes})" if nodes else ""))
        if c["errors"]:
            line += "; errors: " + "; ".join(c["errors"])
        elif c["allocation"] == "Resizing":
            line += "; nodes are being allocated (this can take minutes; low-priority may wait longer)"
        elif (c["target"] or 0) == 0:
            line += "; no node requested yet (the job waits for the cluster or for quota)"
        return line

    def _failure_lines(self, seam, run, state):
        error = seam.job_error(run.remote_id)
        lines = []
        if error:
            lines.append(f"Azure ML error: {error['code'] or 'Error'}: {error['message']}")
        else:
            lines.append("Azure ML reports no error details for the failure")
        url = state.get("studio_url")
        lines.append(f"full logs: {url} (Outputs + logs)" if url else
                     f"full logs: Azure ML studio, job {run.remote_id}")
        return lines

    def status(self, run):
        from .seam import azure_errors
        from .tailer import map_status

        from azure.core.exceptions import ResourceNotFoundError

        with azure_errors():
            seam = self._run_seam(run)
            try:
                return map_status(seam.job_status(run.remote_id))
            except ResourceNotFoundError:
                # the submit was interrupted before the service created the job
                self._notice(f"Azure ML job {run.remote_id} does not exist: its submit did not complete")
                return FAILED

    def cancel(self, run):
        from .seam import azure_errors

        with azure_errors():
            self._run_seam(run).cancel(run.remote_id)

    def download(self, run, dest):
        """The `model` output (model.onnx, labels.json, metrics.json, history.jsonl, predictions.csv) into dest;
        for a search, the best trial's, with search.json (sweep_results.download_search)."""
        from ...storage.blob import download_prefix
        from .job import run_prefix
        from .seam import azure_errors

        state = self._run_state(run)
        if self.status(run) not in TERMINAL:
            raise UsageError(f"run {run.run_id} has not finished yet; download it when it has")
        seam = self._run_seam(run)
        with azure_errors():
            container = seam.container_client(state["datastore"])
            if state.get("search"):
                from .sweep_results import download_search

                download_search(seam, container, state, run.run_id, dest, on_event=self.on_event)
                return
            if state.get("kind") == SCORE:  # the prediction rows; scoring.py writes them to the user's file
                download_prefix(container, state["outputs"]["predictions"], dest)
                return
        # an attached job (orchestrate attach) records where its model output is
        prefix = (state.get("outputs") or {}).get("model") or run_prefix(run.run_id, "model")
        download_prefix(container, prefix, dest)


STATUS_NOTES = {
    "NotResponding": " (the service has not heard from the job's nodes for a while)",
    "Paused": " (paused on the service; it resumes only when resumed there)",
    "CancelRequested": " (it may still write a checkpoint, or even complete)",
}
STOPPED = frozenset({"NotResponding", "Paused"})  # SDK-terminal, not ended for the ledger


# `orchestrate train --backend azure --dry-run [--export FILE]`: no network, no credentials ------
def _spec_settings(spec):
    options = spec.backend_options
    return load_settings({k: options.get(k) for k in PROFILE_FIELDS}, profile=options.get("profile"))


def _build(spec, datastore=None):
    """(plan, azure-ai-ml job) of `spec`: the command job of one run (job.py), or the sweep job
    of a search when spec.trials is set (sweep_job.py). The plan's compute, name and
    low_priority are read the same way for both (a SweepPlan's `.job` is its trials' JobPlan)."""
    from .job import DEFAULT_DATASTORE, build_job, plan_from_spec

    datastore = datastore or DEFAULT_DATASTORE
    if spec.trials:
        from .sweep_job import build_sweep, sweep_plan_from_spec

        sweep = sweep_plan_from_spec(spec, datastore=datastore)
        return sweep.job, build_sweep(sweep)
    plan = plan_from_spec(spec, datastore=datastore)
    return plan, build_job(plan)


def dry_run(spec, export=None, on_event=ignore):
    """The Plan of `spec` as an Azure ML job, its YAML written to `export` when given (the path checked
    before anything else); no cloud call. With --weights-upload the YAML names the weights file that
    `az ml job create` uploads, so it is fetched first."""
    from pathlib import Path

    from ...plan import Plan
    from ...weights import fetch_imagenet_weights
    from .job import check_export_path

    if export:
        check_export_path(export)
    description = describe_plan(spec)
    if export:
        if spec.backend_options.get("weights_upload"):
            fetch_imagenet_weights(spec.train_args, on_event)
        export_job_yaml(spec, export)
    return Plan(spec.run_id, description, spec, Path(export) if export else None,
                write_yaml=lambda path: export_job_yaml(spec, path))


def describe_plan(spec):
    """What a submit of `spec` would create and run, as printable lines (the notice line first);
    a search (spec.trials) describes its sweep job: trials, concurrency, limits, policy."""
    from .job import describe, plan_from_spec

    if spec.trials:
        from .sweep_job import describe_sweep, sweep_plan_from_spec

        return describe_sweep(sweep_plan_from_spec(spec), _spec_settings(spec))
    return describe(plan_from_spec(spec), _spec_settings(spec))


def export_job_yaml(spec, path):
    """Write the job of `spec` as Azure ML YAML (`az ml job create -f`, `azure.ai.ml.load_job`):
    a command job, or a sweep job for a search; the path is checked first, so a bad one fails
    before the job is planned."""
    from .job import check_export_path, export_yaml

    check_export_path(path)
    export_yaml(_build(spec)[1], path)
