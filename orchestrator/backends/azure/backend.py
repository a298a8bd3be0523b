"""The Azure ML backend: the job contract on an AmlCompute cluster.

prepare: create the cluster when missing (quota-checked) and upload the dataset to the workspace's
default datastore (only changed files are sent: storage.blob). submit: the command job of
job.py. log_lines/status/cancel/download: by the Azure ML job name (tailer.py, seam.py).

Why runs/<id>/azure.json: `orchestrate logs/status/download RUN` may run in another process,
directory or shell than the submit; the file holds the workspace coordinates and the datastore of
the run (no secrets), so they work without the flags the run was started with.

backend_options (from `orchestrate train`): compute (alias or size; default gpu-t4), nodes,
low_priority, experiment, max_hours (the job's timeout; default 24), and the workspace flags subscription_id, resource_group,
workspace_name, profile.
"""
import json
import sys
import time

from ...errors import UserError
from ..base import FAILED, TERMINAL, Backend, RunRef
from .settings import PROFILE_FIELDS, Settings, load_settings

STATE_FILE = "azure.json"


class AzureBackend(Backend):
    name = "azure"

    def __init__(self, seam_factory=None, sleep=time.sleep, say=None, clock=time.monotonic, approve=None):
        if seam_factory is None:
            from .seam import AzureSeam as seam_factory
        self.seam_factory = seam_factory
        self.sleep = sleep
        self.clock = clock
        self.say = say or (lambda line: print(line, file=sys.stderr))
        # Called once the plan of a cluster to create is shown, before it is created: the CLI's
        # confirmation on a terminal (it raises to stop); None creates without asking.
        self.approve = approve
        self._datastores = {}  # run_id -> datastore resolved by prepare()

    # submit side --------------------------------------------------------------------------
    def _spec_seam(self, spec):
        settings = _spec_settings(spec)
        return self.seam_factory(settings.require("subscription_id", "resource_group", "workspace_name"))

    def prepare(self, spec):
        from remote_scripts.options import given_value

        from ...storage.upload_progress import UploadProgress
        from .job import build_job, dataset_prefix, plan_from_spec
        from .provision import ensure_compute
        from .seam import azure_errors

        plan = plan_from_spec(spec)
        build_job(plan)  # an invalid job fails before anything is created or uploaded
        seam = self._spec_seam(spec)
        with azure_errors():
            # storage first: a refused connection string or datastore fails before a cluster exists
            datastore = seam.default_datastore()
            container = seam.container_client(datastore)
            ensure_compute(seam, plan.compute, say=self.say, max_nodes=plan.nodes,
                           low_priority=plan.low_priority, approve=self.approve)
        if plan.packed:  # shards, content-addressed: see storage/packed_blob.py
            from ...storage.packed_blob import pack_and_upload

            _, result = pack_and_upload(spec.data, dataset_prefix(spec.data, packed=True), lambda: container,
                                        labels=given_value(spec.train_args, "--labels"), say=self.say)
            self.say(f"dataset: {result.shards_sent} shard(s) uploaded ({result.bytes_sent / 1e6:.1f} MB), "
                     f"{result.shards_skipped} unchanged")
        else:
            with UploadProgress() as bars:
                result = bars.upload(spec.data, dataset_prefix(spec.data), lambda: container,
                                     labels=given_value(spec.train_args, "--labels"))
            self.say(f"dataset: {result.files_sent} file(s) uploaded, {result.files_skipped} unchanged")
        self._datastores[spec.run_id] = datastore

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
        from .job import build_job, plan_from_spec
        from .seam import azure_errors

        seam = self._spec_seam(spec)
        with azure_errors():
            datastore = self._datastores.get(spec.run_id) or seam.default_datastore()
            plan = plan_from_spec(spec, datastore=datastore["name"])
            job = build_job(plan)
        state = {"job": plan.name, "studio_url": None, "compute": plan.compute.cluster,
                 "datastore": datastore, "workspace": seam.settings.public()}
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        _write_state(spec.run_dir, state)
        with azure_errors():
            submitted = seam.submit(job)
        state["studio_url"] = submitted["studio_url"]
        _write_state(spec.run_dir, state)
        again = "" if submitted.get("created", True) else " (already submitted: not created again)"
        self.say(f"Azure ML job {submitted['name']}{again}: {submitted['studio_url']}")
        return RunRef(spec.run_id, self.name, spec.run_dir, remote_id=submitted["name"])

    # run side -----------------------------------------------------------------------------
    def _run_state(self, run):
        try:
            return json.loads((run.run_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            raise UserError(f"{run.run_dir / STATE_FILE} is missing or unreadable: "
                            f"cannot find the Azure ML job of run {run.run_id}") from None

    def _run_seam(self, run):
        """A seam on the run's workspace; the storage secret (if any) comes from the env again."""
        state = self._run_state(run)
        secret = load_settings().storage_connection_string
        return self.seam_factory(Settings(**state["workspace"], storage_connection_string=secret))

    def log_lines(self, run, cursor=0, follow=True):
        """The job's rank-0 log; says each status change, why a job waits (every minute of an
        unchanged Queued/Preparing), a restarted attempt, and a failure's code, message and
        where the full logs are."""
        from .seam import azure_errors, terminal_statuses
        from .tailer import tail

        seam = self._run_seam(run)
        state = self._run_state(run)
        seen = []

        def on_status(status):
            seen.append(status)
            self.say(f"Azure ML job: {status}{STATUS_NOTES.get(status, '')}")
            if status in STOPPED:
                self.say(f"  following stops here (azure-ai-ml counts {status} as an end); the job "
                         f"may recover: `orchestrate status {run.run_id}`, `orchestrate logs {run.run_id}`")

        def on_wait(status, seconds):
            self.say(f"Azure ML job: {status} for {int(seconds)} s; "
                     + self._why_waiting(seam, state.get("compute")))

        with azure_errors():
            yield from tail(seam, run.remote_id, cursor, follow, sleep=self.sleep,
                            on_status=on_status, on_wait=on_wait,
                            on_restart=lambda: self.say("Azure ML job: a new attempt started "
                                                        "(its log follows)"),
                            stop=terminal_statuses(), clock=self.clock)
            if seen and seen[-1] == "Failed":
                for line in self._failure_lines(seam, run, state):
                    self.say(line)

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
                self.say(f"Azure ML job {run.remote_id} does not exist: its submit did not complete")
                return FAILED

    def cancel(self, run):
        from .seam import azure_errors

        with azure_errors():
            self._run_seam(run).cancel(run.remote_id)

    def download(self, run, dest):
        """The `model` output (model.onnx, labels.json, metrics.json, history.jsonl, predictions.csv) into dest."""
        from ...storage.blob import download_prefix
        from .job import run_prefix
        from .seam import azure_errors

        state = self._run_state(run)
        if self.status(run) not in TERMINAL:
            raise UserError(f"run {run.run_id} has not finished yet; download it when it has")
        seam = self._run_seam(run)
        with azure_errors():
            container = seam.container_client(state["datastore"])
        # an attached job (orchestrate attach) records where its model output is
        prefix = (state.get("outputs") or {}).get("model") or run_prefix(run.run_id, "model")
        download_prefix(container, prefix, dest)


STATUS_NOTES = {
    "NotResponding": " (the service has not heard from the job's nodes for a while)",
    "Paused": " (paused on the service; it resumes only when resumed there)",
    "CancelRequested": " (it may still write a checkpoint, or even complete)",
}
STOPPED = frozenset({"NotResponding", "Paused"})  # SDK-terminal, not ended for the ledger


def _write_state(run_dir, state):
    path = run_dir / STATE_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    partial.replace(path)


# `orchestrate train --backend azure --dry-run [--export FILE]`: no network, no credentials ------
def _spec_settings(spec):
    options = spec.backend_options
    return load_settings({k: options.get(k) for k in PROFILE_FIELDS}, profile=options.get("profile"))


def describe_plan(spec):
    """What a submit of `spec` would create and run, as printable lines (the notice line first)."""
    from .job import describe, plan_from_spec

    return describe(plan_from_spec(spec), _spec_settings(spec))


def export_job_yaml(spec, path):
    """Write the job of `spec` as Azure ML YAML (`az ml job create -f`, `azure.ai.ml.load_job`);
    the path is checked first, so a bad one fails before the job is planned."""
    from .job import build_job, check_export_path, export_yaml, plan_from_spec

    check_export_path(path)
    export_yaml(build_job(plan_from_spec(spec)), path)
