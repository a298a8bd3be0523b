"""The Azure ML backend: the job contract on an AmlCompute cluster.

prepare: create the cluster when missing (quota-checked) and upload the dataset to the workspace's
default datastore (only changed files are sent: storage.blob). submit: the command job of
job.py. log_lines/status/cancel/download: by the Azure ML job name (tailer.py, seam.py).

Why runs/<id>/azure.json: `orchestrate logs/status/download RUN` may run in another process,
directory or shell than the submit; the file holds the workspace coordinates and the datastore of
the run (no secrets), so they work without the flags the run was started with.

backend_options (from `orchestrate train`): compute (alias or size; default gpu-t4), nodes,
low_priority, experiment, and the workspace flags subscription_id, resource_group,
workspace_name, profile.
"""
import json
import sys
import time

from ...errors import UserError
from ..base import TERMINAL, Backend, RunRef
from .settings import PROFILE_FIELDS, Settings, load_settings

STATE_FILE = "azure.json"


class AzureBackend(Backend):
    name = "azure"

    def __init__(self, seam_factory=None, sleep=time.sleep, say=None):
        if seam_factory is None:
            from .seam import AzureSeam as seam_factory
        self.seam_factory = seam_factory
        self.sleep = sleep
        self.say = say or (lambda line: print(line, file=sys.stderr))
        self._datastores = {}  # run_id -> datastore resolved by prepare()

    # submit side --------------------------------------------------------------------------
    def _spec_seam(self, spec):
        settings = _spec_settings(spec)
        return self.seam_factory(settings.require("subscription_id", "resource_group", "workspace_name"))

    def prepare(self, spec):
        from ...storage.upload_progress import UploadProgress
        from .job import build_job, dataset_prefix, plan_from_spec
        from .provision import ensure_compute
        from .seam import azure_errors

        plan = plan_from_spec(spec)
        build_job(plan)  # an invalid job fails before anything is created or uploaded
        seam = self._spec_seam(spec)
        with azure_errors():
            ensure_compute(seam, plan.compute, say=self.say, max_nodes=plan.nodes,
                           low_priority=plan.low_priority)
            datastore = seam.default_datastore()
            container = seam.container_client(datastore)
        with UploadProgress() as bars:
            result = bars.upload(spec.data, dataset_prefix(spec.data), lambda: container)
        self.say(f"dataset: {result.files_sent} file(s) uploaded, {result.files_skipped} unchanged")
        self._datastores[spec.run_id] = datastore

    def submit(self, spec):
        from .job import build_job, plan_from_spec
        from .seam import azure_errors

        seam = self._spec_seam(spec)
        with azure_errors():
            datastore = self._datastores.get(spec.run_id) or seam.default_datastore()
            job = build_job(plan_from_spec(spec, datastore=datastore["name"]))
            submitted = seam.submit(job)
        state = {"job": submitted["name"], "studio_url": submitted["studio_url"],
                 "datastore": datastore, "workspace": seam.settings.public()}
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        (spec.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        self.say(f"Azure ML job {submitted['name']}: {submitted['studio_url']}")
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
        from .seam import azure_errors
        from .tailer import tail

        seam = self._run_seam(run)
        with azure_errors():
            yield from tail(seam, run.remote_id, cursor, follow, sleep=self.sleep,
                            on_status=lambda status: self.say(f"Azure ML job: {status}"))

    def status(self, run):
        from .seam import azure_errors
        from .tailer import map_status

        with azure_errors():
            return map_status(self._run_seam(run).job_status(run.remote_id))

    def cancel(self, run):
        from .seam import azure_errors

        with azure_errors():
            self._run_seam(run).cancel(run.remote_id)

    def download(self, run, dest):
        """The `model` output (model.onnx, labels.json, metrics.json, history.jsonl) into dest."""
        from ...storage.blob import download_prefix
        from .job import run_prefix
        from .seam import azure_errors

        if (dest / "model.onnx").exists():
            return
        state = self._run_state(run)
        if self.status(run) not in TERMINAL:
            raise UserError(f"run {run.run_id} has not finished yet; download it when it has")
        seam = self._run_seam(run)
        with azure_errors():
            container = seam.container_client(state["datastore"])
        download_prefix(container, run_prefix(run.run_id, "model"), dest)


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
