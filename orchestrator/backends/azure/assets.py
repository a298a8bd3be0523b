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
    folder.update_backend_state(registered=result)
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
                                 "nodes": job.get("instance_count") or 1, "idle_seconds": cluster.get("idle_seconds")}
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
# What the estimate prices: the nodes the job held, from the run's own record, for the time run
# history says they ran (not the ledger's submit-to-seen, which counts queueing and, for a
# `--detach` run checked a day later, that day), plus the idle time each node stays up after its
# last run before the cluster scales it down. Not the bill: node allocation and the image pull
# before a run starts are not in its times, and the price is list_sizes' Linux retail estimate.
BASIS = ("estimate, not the bill: run time from Azure ML's run records (start to end; a search's trials summed), "
         "x nodes, + the idle minutes before scale-down on each node, x the Linux hourly price of list_sizes; "
         "node allocation and image pull before the start are not included")


def _cluster_size(cluster):
    """The VM size of a cluster named as catalogue.resolve names one (an alias such as cpu, or a
    size's own cluster name such as nc16as-t4-v3): what a score run records of its compute."""
    from . import catalogue

    for size in catalogue.SIZES.values():
        resolved = catalogue.resolve(size.name)
        if resolved.cluster == cluster:
            return resolved.size.name
    raise UsageError(f"cluster {cluster!r} is not one of the catalogue's: its size is not known")


def run_compute(record, state):
    """{size, tier, nodes, per_run_nodes, idle_minutes, search} of an Azure run, from its own record.

    nodes: how many nodes the job held at once. An adopted job: azure.json's compute_size (its
    cluster, read when it was attached). A score run: its cluster and instances (the ledger's
    params.score). A search: its trials at once (max_concurrent_trials; one node per trial, so
    per_run_nodes is 1). A training run: --compute, --nodes and --low-priority (backend_options).
    """
    from .provision import DEFAULT_IDLE_MINUTES

    params = record.params or {}
    compute = state.get("compute_size") or {}
    if compute.get("size"):
        idle = compute.get("idle_seconds")
        nodes = int(compute.get("nodes") or 1)
        return {"size": compute["size"], "tier": compute.get("tier") or "dedicated", "nodes": nodes,
                "per_run_nodes": nodes, "search": False,
                "idle_minutes": idle / 60 if idle is not None else DEFAULT_IDLE_MINUTES}
    if "score" in params:
        from .score_job import DEFAULTS as SCORE_DEFAULTS

        score = params["score"]
        nodes = int(score.get("instances") or 1)
        return {"size": _cluster_size(score.get("compute") or SCORE_DEFAULTS["compute"]), "tier": "dedicated",
                "nodes": nodes, "per_run_nodes": nodes, "search": False, "idle_minutes": DEFAULT_IDLE_MINUTES}
    from . import catalogue
    from .job import DEFAULT_COMPUTE

    options = params.get("backend_options") or {}
    resolved = catalogue.resolve(options.get("compute") or DEFAULT_COMPUTE)
    tier = "low_priority" if options.get("low_priority") else "dedicated"
    if params.get("trials"):
        from .sweep_job import DEFAULT_CONCURRENCY

        at_once = min(int(options.get("max_concurrent_trials") or DEFAULT_CONCURRENCY), len(params["trials"]))
        return {"size": resolved.size.name, "tier": tier, "nodes": at_once, "per_run_nodes": 1, "search": True,
                "idle_minutes": DEFAULT_IDLE_MINUTES}
    nodes = int(options.get("nodes") or 1)
    return {"size": resolved.size.name, "tier": tier, "nodes": nodes, "per_run_nodes": nodes, "search": False,
            "idle_minutes": DEFAULT_IDLE_MINUTES}


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


def run_times(seam, record, state, now=None):
    """{hours, start, end, runs, ended} of an Azure run, as run history records its runs.

    The runs whose nodes are priced: a training job's own run; a score job's pipeline step (the
    pipeline's own run starts before its step has nodes); a search's trials, their hours summed
    (each on its own node). hours runs to `now` for a run still going; a run that never started
    counts none. ended: the job's run is over and every run that started has its end.
    """
    from .tailer import map_status

    job = state["job"]
    own = seam.run_record(job)
    search = bool((record.params or {}).get("trials"))
    runs = seam.child_runs(job) if search or "score" in (record.params or {}) else [own]
    spans = [(run["start"], run["end"]) for run in runs if run.get("start") is not None]
    ended = map_status(own["status"]) in TERMINAL and all(end is not None for _, end in spans)
    clock = now or time.time()
    if search:
        seconds = sum(max((end or clock) - start, 0.0) for start, end in spans)
    else:
        seconds = max(max((end or clock) for _, end in spans) - min(start for start, _ in spans), 0.0) if spans else 0.0
    ends = [end for _, end in spans]
    return {"hours": seconds / 3600, "start": min((s for s, _ in spans), default=None),
            "end": max(ends) if spans and ended else None, "runs": len(spans), "ended": ended}


def cost_estimate(record, state, seam_factory=None, now=None):
    """{hours, node_hours, nodes, idle_nodes, idle_minutes, size, tier, per_node_hour, currency,
    location, amount, final, estimate, basis[, trials, start, end]} or {"error": reason}.

    hours: the run's time on its nodes as run history records it (a search's trials summed);
    node_hours adds up the nodes and, once it has ended, the idle minutes each node stays up before
    the cluster scales down. The price is read from list_sizes once, and the times of an ended run
    from run history once: both are cached in azure.json.
    """
    try:
        compute = run_compute(record, state)
    except OrchestrateError as exc:
        return {"error": str(exc)}
    price, times = state.get("price"), state.get("times")
    stale = not price or price.get("size") != compute["size"] or price.get("tier") != compute["tier"]
    if stale or not times:
        if seam_factory is None:
            return {"error": "no price or run times cached"}
        from .seam import azure_errors

        try:
            with azure_errors():
                seam = seam_factory()
                if stale:
                    price = size_price(seam, compute["size"], compute["tier"])
                if not times:
                    times = run_times(seam, record, state, now)
        except OrchestrateError as exc:
            return {"error": str(exc)}
        RunFolder(record.run_dir).update_backend_state(price=price, **({"times": times} if times["ended"] else {}))
    idle_nodes = min(compute["nodes"], times["runs"] * compute["per_run_nodes"]) if times["ended"] else 0
    node_hours = times["hours"] * compute["per_run_nodes"] + idle_nodes * compute["idle_minutes"] / 60
    out = {"hours": round(times["hours"], 3), "node_hours": round(node_hours, 3), "nodes": compute["nodes"],
           "idle_nodes": idle_nodes, "idle_minutes": compute["idle_minutes"], "size": compute["size"],
           "tier": compute["tier"], "per_node_hour": price.get("per_node_hour"), "currency": price.get("currency"),
           "location": price.get("location"), "amount": None, "final": times["ended"], "estimate": True,
           "start": times["start"], "end": times["end"], "basis": BASIS}
    if compute["search"]:
        out["trials"] = times["runs"]
    if price.get("per_node_hour") is None:
        out["error"] = f"no {compute['tier']} price for {compute['size']} in {price.get('location')}"
        return out
    out["amount"] = round(node_hours * price["per_node_hour"], 2)
    return out


# compute list -------------------------------------------------------------------------------
CLUSTER_COLUMNS = ("name", "size", "tier", "min_nodes", "max_nodes", "current_nodes", "idle_nodes",
                   "busy_nodes", "allocation", "state")
