"""After the run, in the cloud: model and data assets, adopting a job started elsewhere, the cost
estimate of a run and the clusters of a workspace.

Why here and not in the CLI: `train --register` and `orchestrate register RUN` register the same
way, and `attach` writes the run folder (azure.json, spec.json) and the ledger row in the shape the
backend's own submit does, so logs/status/download/predict find an adopted job exactly like one
of ours. Every network call goes through the seam.

Lineage: the model asset's path is the job's named output (`azureml://jobs/<job>/outputs/model`),
not a copy of the blobs, so Studio links the model to the job; the data asset is the uri_folder the
job read (its `data` input), so the dataset is one click from the model too.
"""
import json
import re
import shlex
import time
from pathlib import Path

from remote_scripts.metrics import HEADLINE_METRICS

from ...errors import OrchestrateError, UsageError
from ...events import ignore, notice
from ...run_folder import LABELS, METRICS, RunFolder
from ..base import COMPLETED, TERMINAL

MODEL_OUTPUT = "model"
ASSET_NAME = re.compile(r"[^A-Za-z0-9_-]")
MAX_TAG = 256  # keep tags short: Studio shows them in one line


def asset_name(text):
    """Azure ML asset names: letters, digits, '-' and '_', starting with a letter or digit."""
    name = ASSET_NAME.sub("-", text).strip("-_")[:255]
    if not name:
        raise UsageError(f"cannot make an Azure ML asset name of {text!r}: give one with --name")
    return name


def job_output_uri(job, output=MODEL_OUTPUT):
    return f"azureml://jobs/{job}/outputs/{output}"


# register -------------------------------------------------------------------------------------
def model_tags(run_id, labels, metrics):
    """Tags of the model asset: the run, the labels (in output order) and the test metrics."""
    tags = {"orchestrate.run_id": run_id, "num_classes": str(len(labels))}
    text = ",".join(labels)
    tags["labels"] = text if len(text) <= MAX_TAG else text[:MAX_TAG - 3] + "..."
    for key in HEADLINE_METRICS:
        if isinstance((metrics or {}).get(key), (int, float)):
            tags[f"test_{key}"] = f"{metrics[key]:.4f}"
    return tags


def _read_json(path, what):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} is missing: download the run first (orchestrate download RUN)") from None
    except ValueError:
        raise UsageError(f"{path} is not valid JSON ({what})") from None


def label_names(labels):
    """labels.json: a list of names, or {"labels": [...]} / {index: name}."""
    if isinstance(labels, dict):
        labels = labels.get("labels", labels.get("classes", labels))
        if isinstance(labels, dict):
            labels = [labels[k] for k in sorted(labels, key=lambda k: int(k) if str(k).isdigit() else k)]
    return [str(label) for label in labels]


def register_run(seam, record, state, model_name=None, data_name=None):
    """Register the completed run's ONNX model and its dataset; {"model": {...}, "data": {...}}.

    The model is the job's `model` output (lineage to the job); tags: labels and test metrics.
    A search's model, labels and metrics are its best trial's (the downloaded outputs): the
    output registered is that trial job's, since the sweep job's own `model` output is a template
    path (`${{name}}`, one folder per trial) that holds no model.
    The data asset is the uri_folder the job's `data` input read.
    """
    if record.status != COMPLETED:
        raise UsageError(f"run {record.run_id} is {record.status}: only a completed run can be registered")
    job_name = state["job"]
    folder = RunFolder(record.run_dir)
    labels = label_names(_read_json(folder.output(LABELS), "labels"))
    metrics = _read_json(folder.output(METRICS), "metrics")
    tags = model_tags(record.run_id, labels, metrics)
    model_job, what = job_name, f"orchestrate run {record.run_id}"
    if state.get("search"):
        from .sweep_results import recorded_best

        trial, model_job = recorded_best(record.run_dir, record.run_id)
        tags["orchestrate.trial"] = trial
        what = f"orchestrate search {record.run_id}, best trial {trial} (job {model_job})"
    job = seam.get_job(job_name)
    if job is None:
        raise UsageError(f"the Azure ML job {job_name} of run {record.run_id} no longer exists")
    model = seam.register_model(
        name=asset_name(model_name or record.name), path=job_output_uri(model_job), tags=tags,
        description=f"{what}: ONNX image classifier ({len(labels)} classes)")
    result = {"model": model}
    data_input = (job.get("inputs") or {}).get("data") or {}
    if data_input.get("path") and str(data_input["path"]).startswith("azureml://"):
        result["data"] = seam.register_data(
            name=asset_name(data_name or Path(record.dataset.rstrip("/")).name),
            path=data_input["path"], tags={"orchestrate.run_id": record.run_id},
            description=f"dataset of orchestrate run {record.run_id}")
    folder.write_backend_state({**state, "registered": result})
    return result


# attach -------------------------------------------------------------------------------------
def _train_args(command):
    """The train.py arguments of a job's command, without the ones bound to inputs/outputs."""
    from .job import COMMAND

    try:
        words = shlex.split(command or "")
    except ValueError:
        return []
    fixed = shlex.split(COMMAND)
    if words[:len(fixed)] != fixed:
        return []
    args, rest = [], iter(words[len(fixed):])
    for word in rest:
        if word == "--weights":
            value = next(rest, "")
            if "${{" not in value:
                args += [word, value]
        elif "${{" not in word:
            args.append(word)
    return args


def _datastore_prefix(uri):
    """(datastore, blob prefix) of azureml://datastores/<ds>/paths/<prefix>/, else (None, None)."""
    match = re.match(r"^azureml://datastores/([^/]+)/paths/(.+?)/?$", uri or "")
    return (match.group(1), match.group(2)) if match else (None, None)


def attach_job(seam, ledger, job_name, runs_dir, on_event=None):
    """Adopt the Azure ML job `job_name` into the ledger; returns the new RunRecord.

    Writes runs/<job>/azure.json and spec.json as a submit of ours does, so `logs`, `status`,
    `download` and `predict` work on it; a job the ledger already holds is left as it is.
    A job whose model output cannot be found is adopted all the same, with a notice to `on_event`.
    """
    from ...ledger import RunRecord
    from .tailer import map_status

    job = seam.get_job(job_name)
    if job is None:
        raise UsageError(f"no Azure ML job named {job_name!r} in workspace "
                        f"{seam.settings.workspace_name!r}")
    run_id = job["name"]
    try:
        existing = ledger.get(run_id)
    except OrchestrateError:
        existing = None
    if existing is not None and existing.run_id == run_id:
        raise UsageError(f"job {run_id} is already in the ledger as run {run_id}")
    run_dir = (Path(runs_dir) / run_id).resolve()
    folder = RunFolder(run_dir)
    folder.logs.mkdir(parents=True, exist_ok=True)
    datastore = seam.default_datastore()
    state = {"job": run_id, "studio_url": job.get("studio_url"), "datastore": datastore,
             "workspace": seam.settings.public(), "attached": True}
    model_uri = ((job.get("outputs") or {}).get(MODEL_OUTPUT) or {}).get("path")
    store, prefix = _datastore_prefix(model_uri)
    if prefix and store == datastore["name"]:
        state["outputs"] = {MODEL_OUTPUT: prefix}
    elif model_uri or MODEL_OUTPUT not in (job.get("outputs") or {}):
        (on_event or ignore)(notice(f"note: job {run_id} has no '{MODEL_OUTPUT}' output on {datastore['name']}: "
                                    "download and predict will not find its model"))
    cluster = seam.get_compute(job["compute"]) if job.get("compute") else None
    if job.get("compute"):
        state["compute"] = job["compute"]  # the cluster, as the backend's submit records it
    if cluster:
        state["compute_size"] = {"size": cluster.get("size"), "tier": cluster.get("tier"),
                                 "nodes": job.get("instance_count") or 1}
    folder.write_backend_state(state)
    data_uri = ((job.get("inputs") or {}).get("data") or {}).get("path") or ""
    backend_options = {"compute": job.get("compute"), "nodes": job.get("instance_count") or 1,
                       "experiment": job.get("experiment"), "attached": True}
    backend_options = {k: v for k, v in backend_options.items() if v is not None}
    train_args = _train_args(job.get("command"))
    spec = {"backend": "azure", "run_id": run_id, "data": data_uri, "run_dir": str(run_dir),
            "train_args": train_args, "backend_options": backend_options}
    folder.write_spec(spec)
    created = job.get("created_at") or time.time()
    record = RunRecord(run_id=run_id, name=job.get("display_name") or run_id, backend="azure",
                       status=map_status(job.get("status")), dataset=data_uri, run_dir=str(run_dir),
                       params={"train_args": train_args, "backend_options": backend_options},
                       remote_id=run_id, created_at=created, updated_at=time.time())
    ledger.add(record)
    return record


# cost ---------------------------------------------------------------------------------------
def run_compute(record, state):
    """{size, tier, nodes} of an Azure run: azure.json's compute (attached runs), else the spec's."""
    if (state.get("compute_size") or {}).get("size"):
        c = state["compute_size"]
        return {"size": c["size"], "tier": c.get("tier") or "dedicated", "nodes": int(c.get("nodes") or 1)}
    from . import catalogue

    options = (record.params or {}).get("backend_options") or {}
    from .job import DEFAULT_COMPUTE

    resolved = catalogue.resolve(options.get("compute") or DEFAULT_COMPUTE)
    return {"size": resolved.size.name, "tier": "low_priority" if options.get("low_priority") else "dedicated",
            "nodes": int(options.get("nodes") or 1)}


def size_price(seam, size, tier):
    """{size, tier, per_node_hour, currency, location} from list_sizes' Linux estimates."""
    ws = seam.get_workspace() or {}
    location = ws.get("location") or seam.settings.location
    rows = {r["name"].lower(): r for r in seam.list_sizes(location)}
    row = rows.get(str(size).lower())
    prices = (row or {}).get("prices") or {}
    key = "low_priority" if tier == "low_priority" else "dedicated"
    return {"size": size, "tier": tier, "per_node_hour": prices.get(key),
            "currency": prices.get("currency"), "location": location}


def hours(record, now=None):
    """Hours from the submit to the end the ledger saw (to now while the run goes on)."""
    end = record.updated_at if record.status in TERMINAL else (now or time.time())
    return max(end - record.created_at, 0.0) / 3600


def cost_estimate(record, state, seam_factory=None, now=None):
    """{hours, nodes, size, tier, per_node_hour, currency, amount, basis} or {"error": reason}.

    The price is read from list_sizes once and cached in azure.json; the duration is the ledger's
    (submit to the end the client saw, queueing included: an estimate, not the bill).
    """
    compute = run_compute(record, state)
    price = state.get("price")
    if not price or price.get("size") != compute["size"] or price.get("tier") != compute["tier"]:
        if seam_factory is None:
            return {"error": "no price cached"}
        from .seam import azure_errors

        try:
            with azure_errors():
                price = size_price(seam_factory(), compute["size"], compute["tier"])
        except OrchestrateError as exc:
            return {"error": str(exc)}
        RunFolder(record.run_dir).write_backend_state({**state, "price": price})
    h = hours(record, now)
    out = {"hours": round(h, 3), "nodes": compute["nodes"], "size": compute["size"], "tier": compute["tier"],
           "per_node_hour": price.get("per_node_hour"), "currency": price.get("currency"),
           "location": price.get("location"), "amount": None, "final": record.status in TERMINAL,
           "basis": "estimate: duration x nodes x Linux hourly price (list_sizes); "
                    "duration from submit to the end the client saw, queueing included"}
    if price.get("per_node_hour") is None:
        out["error"] = f"no {compute['tier']} price for {compute['size']} in {price.get('location')}"
        return out
    out["amount"] = round(h * compute["nodes"] * price["per_node_hour"], 2)
    return out


def cost_line(cost):
    if cost.get("amount") is None:
        return f"cost       unknown ({cost.get('error', 'no price')})"
    tier = "low-priority" if cost["tier"] == "low_priority" else "dedicated"
    still = "" if cost.get("final", True) else " so far"
    return (f"cost       ~{cost['amount']:.2f} {cost['currency']}{still} (estimate: {cost['hours']:.2f} h x "
            f"{cost['nodes']} node(s) x {cost['per_node_hour']:.3f} {cost['currency']}/h {tier} "
            f"{cost['size']}, Linux, {cost['location']}; queueing included)")


# compute list -------------------------------------------------------------------------------
CLUSTER_COLUMNS = ("name", "size", "tier", "min_nodes", "max_nodes", "current_nodes", "idle_nodes",
                   "busy_nodes", "allocation", "state")
