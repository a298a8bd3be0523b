"""The one place that talks to Azure: a thin wrapper over MLClient and ResourceManagementClient,
and the one place that touches azure-ai-ml's private API.

Why a seam: the control plane cannot run without an Azure account, so tests either swap this class
for a recording stand-in with the same methods, or run it for real with an HTTP transport that
answers in the service's documented shapes (tests/azure_transport.py). Keep it thin --
no decisions here, only calls and the translation of SDK objects into plain values (including the
azure-ai-ml 1.35 bug where list_usage/list_sizes leave snake_case fields None: notes section 2).
Why the private API here too (`_runs_operations`, `_validate`, `_to_job`, `dump_yaml_to_file`):
an SDK release may move any of it, and then this module is the one to fix.
"""
import logging
import re
from collections.abc import Mapping
from functools import cached_property

from ...errors import ServiceError, UsageError
from ...secrets import redact


def terminal_statuses():
    """The job statuses azure-ai-ml itself treats as the end of a job (its stream() stops there):
    RunHistoryConstants.TERMINAL_STATUSES, private, hence here."""
    from azure.ai.ml.operations._run_history_constants import RunHistoryConstants

    return frozenset(_text(s) for s in RunHistoryConstants.TERMINAL_STATUSES)


def _text(value):
    """An SDK string enum (JobStatus.RUNNING, ProvisioningState.SUCCEEDED) as the service spells it."""
    return getattr(value, "value", value)


def load_sdk():
    """Import azure.ai.ml (here, on first use: it takes seconds) and quiet its own logger.

    Its import gives the `azure.ai.ml` logger a stderr handler of its own at INFO that does not
    propagate, so no application's logging configuration reaches it: left so, it prints a warning
    per "experimental class" of the SDK that our jobs use, notes about the SDK's code that the
    user can do nothing about. Only that logger, which the SDK configured itself, is set to ERROR."""
    import azure.ai.ml as sdk

    logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)
    return sdk


def _field(obj, snake, camel):
    value = getattr(obj, snake, None)
    return value if value is not None else obj.__dict__.get(camel)


def _key(obj, snake, camel):
    """A field of a wire mapping (camelCase keys) or of an SDK entity (snake_case attribute)."""
    if isinstance(obj, Mapping):
        return obj.get(camel)
    return getattr(obj, snake, None)


def usage_row(usage):
    """{id, name, current, limit} from an azure.ai.ml Usage, whichever shape the SDK filled in.

    `id` tells the subscription-level quota row from the workspace and compute rows that carry the
    same name; `name` is the prose of name.value (localizedValue when value is missing); a limit of
    -1 (no family-level limit) is passed on as it is.
    """
    name = usage.name
    if not isinstance(name, str):  # a {"value", "localizedValue"} dict in 1.35, else a UsageName
        name = _key(name, "value", "value") or _key(name, "localized_value", "localizedValue")
    limit = _field(usage, "limit", "limit")
    return {"id": _field(usage, "id", "id"), "name": name,
            "current": _field(usage, "current_value", "currentValue") or 0,
            "limit": 0 if limit is None else limit}


def size_row(vm):
    """{name, family, vcpus, gpus, low_priority_capable, prices} from an azure.ai.ml VmSize.

    prices: {"currency", "dedicated", "low_priority"}: the Linux hourly estimates of
    estimatedVMPrices (our jobs run Linux images), None where the service gives none.
    """
    estimates = _field(vm, "estimated_vm_prices", "estimatedVMPrices") or {}
    linux = {(_key(p, "vm_tier", "vmTier") or "").lower(): _key(p, "retail_price", "retailPrice")
             for p in _key(estimates, "values", "values") or []
             if (_key(p, "os_type", "osType") or "").lower() == "linux"}
    prices = {"currency": _key(estimates, "billing_currency", "billingCurrency"),
              "dedicated": linux.get("standard"), "low_priority": linux.get("lowpriority")}
    return {"name": vm.name, "family": _field(vm, "family", "family"),
            "vcpus": _field(vm, "v_cp_us", "vCPUs"), "gpus": _field(vm, "gpus", "gpus"),
            "low_priority_capable": _field(vm, "low_priority_capable", "lowPriorityCapable"),
            "prices": prices}


# offline, but private API: the SDK's own job validation and YAML form ------------------------
def job_validation_errors(job):
    """None when azure-ai-ml's offline validation of `job` passes, else its error messages."""
    result = job._validate()
    return None if result.passed else result.error_messages


def job_yaml_data(job):
    """(YAML-ready dict, {input name: path}) of a Command node's CommandJob form: `Command.dump()`
    writes the node format that load_job rejects; the CommandJob form reloads (notes section 9)."""
    command_job = job._to_job()
    return command_job._to_dict(), {name: value.path for name, value in command_job.inputs.items()}


def write_yaml(path, data):
    """Write `data` as the SDK writes its YAML files; a `path` that cannot be written is a UsageError."""
    from azure.ai.ml._utils.utils import dump_yaml_to_file

    try:
        dump_yaml_to_file(str(path), data, default_flow_style=False)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


class AzureSeam:
    """Network calls for one workspace (settings: settings.Settings)."""

    def __init__(self, settings, credential=None, transport=None, blob_endpoint=None):
        """credential: DefaultAzureCredential when None. transport: the azure-core HttpTransport
        the management clients send through (None: azure-core's default); the tests pass one that
        answers like the service, so the SDK's own serialization and polling run. blob_endpoint:
        the account URL of the datastores' blob service (None: from the datastore, e.g.
        https://ACCOUNT.blob.core.windows.net); the tests point it at Azurite."""
        self.settings = settings
        self._credential = credential
        self._pipeline = {"transport": transport} if transport else {}
        self._blob_endpoint = blob_endpoint

    @cached_property
    def credential(self):
        if self._credential is not None:
            return self._credential
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    @cached_property
    def ml(self):
        sdk = load_sdk()
        s = self.settings
        return sdk.MLClient(self.credential, s.subscription_id, s.resource_group,
                            s.workspace_name, show_progress=False, **self._pipeline)

    # resource group -----------------------------------------------------------------------
    def resource_group_exists(self):
        return self._resources.resource_groups.check_existence(self.settings.resource_group)

    def create_resource_group(self, location):
        self._resources.resource_groups.create_or_update(self.settings.resource_group,
                                                         {"location": location})

    @cached_property
    def _resources(self):
        from azure.mgmt.resource.resources import ResourceManagementClient

        return ResourceManagementClient(self.credential, self.settings.subscription_id,
                                        **self._pipeline)

    # workspace ----------------------------------------------------------------------------
    def get_workspace(self):
        """{name, location} or None when it does not exist."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            ws = self.ml.workspaces.get(self.settings.workspace_name)
        except ResourceNotFoundError:
            return None
        return {"name": ws.name, "location": ws.location}

    def create_workspace(self, workspace):
        self.ml.workspaces.begin_create(workspace).result()

    def delete_workspace(self, delete_dependent_resources, permanently=False):
        """permanently: no soft delete, so the name is free again at once (else it stays taken,
        recoverable, for 14 days)."""
        self.ml.workspaces.begin_delete(
            self.settings.workspace_name, delete_dependent_resources=delete_dependent_resources,
            permanently_delete=permanently).result()

    # compute ------------------------------------------------------------------------------
    def get_compute(self, name):
        """{name, size, min_instances, max_instances, tier, state} or None."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            c = self.ml.compute.get(name)
        except ResourceNotFoundError:
            return None
        # getattr: a compute instance or attached VM of that name has no scale settings
        keys = {"size": "size", "min_instances": "min_instances", "max_instances": "max_instances",
                "tier": "tier", "idle_seconds": "idle_time_before_scale_down",
                "state": "provisioning_state"}
        found = {"name": c.name, **{k: getattr(c, attr, None) for k, attr in keys.items()}}
        found["state"] = _text(found["state"])
        if found["state"] == "Failed":  # the entity keeps only the codes: read the messages
            found["errors"] = self.compute_state(name)["errors"]
        return found

    def compute_state(self, name):
        """What a cluster is doing now, from the compute GET (the AmlCompute entity drops it):
        {state, allocation, current, target, nodes: {preparing, running, ...}, errors: [text]}.
        Private API: ComputeOperations._operation (the REST client) and its as_dict()."""
        ops = self.ml.compute
        rest = ops._operation.get(resource_group_name=ops._operation_scope.resource_group_name,
                                  workspace_name=ops._workspace_name, compute_name=name).as_dict()
        outer = rest.get("properties") or {}
        inner = outer.get("properties") or {}
        errors = [*(outer.get("provisioningErrors") or []), *(inner.get("errors") or [])]
        texts = []
        for entry in errors:
            err = entry.get("error") or entry
            text = f"{err.get('code') or 'Error'}: {err.get('message') or ''}".rstrip(": ")
            if text not in texts:
                texts.append(redact(text))
        counts = inner.get("nodeStateCounts") or {}
        return {"state": outer.get("provisioningState"), "allocation": inner.get("allocationState"),
                "current": inner.get("currentNodeCount"), "target": inner.get("targetNodeCount"),
                "nodes": {k.removesuffix("NodeCount"): v for k, v in counts.items() if v},
                "errors": texts}

    def create_compute(self, compute):
        self.ml.compute.begin_create_or_update(compute).result()

    def delete_compute(self, name):
        self.ml.compute.begin_delete(name).result()

    def list_sizes(self, location):
        """The sizes an AmlCompute cluster can use in `location`, with their prices (size_row)."""
        return [size_row(v) for v in self.ml.compute.list_sizes(location=location,
                                                                 compute_type="AmlCompute")]

    def list_usage(self, location):
        return [usage_row(u) for u in self.ml.compute.list_usage(location=location)]

    # storage ------------------------------------------------------------------------------
    def default_datastore(self):
        """The workspace's default blob datastore: {name, account, container, endpoint}."""
        ds = self.ml.datastores.get_default()
        return {"name": ds.name, "account": ds.account_name, "container": ds.container_name,
                "endpoint": ds.endpoint}

    def list_datastores(self):
        """The workspace's blob datastores, in default_datastore's shape (no secrets)."""
        return [{"name": ds.name, "account": ds.account_name, "container": ds.container_name,
                 "endpoint": ds.endpoint} for ds in self.ml.datastores.list()
                if getattr(ds, "container_name", None)]

    def container_client(self, datastore):
        """A ContainerClient on the datastore (storage.blob.container_client, the one factory).

        AZURE_STORAGE_CONNECTION_STRING is used when it names the datastore's own account (Azurite,
        a private endpoint); one for another account is refused, since the data would go elsewhere
        than the job reads. Otherwise the datastore's own credential: its account key or SAS
        (`datastores.get(include_secrets=True)`, as the SDK itself uploads code), which works for
        the workspace's creator without any data role; an identity-based datastore (no secrets)
        uses the Azure AD credential, which needs "Storage Blob Data Contributor".
        The secret stays inside the client: never in `datastore`, which runs/<id>/azure.json keeps.
        """
        from ...storage.blob import CONNECTION_STRING_ENV, container_client

        conn = self.settings.storage_connection_string
        if conn:
            client = container_client(datastore["container"], connection_string=conn)
            if client.account_name and client.account_name != datastore["account"]:
                raise UsageError(f"{CONNECTION_STRING_ENV} is for storage account '{client.account_name}', but "
                                 f"the workspace datastore '{datastore['name']}' is in '{datastore['account']}': "
                                 f"unset it (the datastore's own credential is used)")
            return client
        ds = self.ml.datastores.get(datastore["name"], include_secrets=True)
        key = getattr(ds.credentials, "account_key", None)
        sas = getattr(ds.credentials, "sas_token", None)
        url = self._account_url(ds)
        if key:
            return container_client(ds.container_name, account_url=url,
                                    credential={"account_name": ds.account_name, "account_key": key})
        if sas:
            return container_client(ds.container_name, account_url=url, credential=sas)
        return container_client(ds.container_name, account_url=url, credential=self.credential,
                                role_scope=self._storage_account_id(ds.account_name))

    def _account_url(self, ds):
        if self._blob_endpoint:
            return self._blob_endpoint
        return f"{ds.protocol or 'https'}://{ds.account_name}.blob.{ds.endpoint}"

    def _storage_account_id(self, account):
        """The ARM id of the workspace's storage account when it is `account` (the role's scope)."""
        storage = getattr(self.ml.workspaces.get(self.settings.workspace_name), "storage_account", None)
        return storage if storage and storage.rstrip("/").rsplit("/", 1)[-1] == account else None

    # jobs ---------------------------------------------------------------------------------
    def submit(self, job):
        """Submit a command job unless one of its name exists; returns {name, studio_url, created}.

        Get-then-create: create_or_update on an existing name PUTs the job again (it is not a
        no-op), so a retried or repeated submit first asks for the job by its name, and creates
        it only when the service says ResourceNotFound.
        """
        from azure.core.exceptions import ResourceNotFoundError

        try:
            found = self.ml.jobs.get(job.name)
        except ResourceNotFoundError:
            submitted = self.ml.jobs.create_or_update(job)
            return {"name": submitted.name, "studio_url": submitted.studio_url, "created": True}
        return {"name": found.name, "studio_url": found.studio_url, "created": False}

    def job_status(self, name):
        """The job's status as the service spells it ("Running"); the SDK hands out a JobStatus
        enum whose str() would be "JobStatus.RUNNING"."""
        return _text(self.ml.jobs.get(name).status)

    def job_exists(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.ml.jobs.get(name)
        except ResourceNotFoundError:
            return False
        return True

    def job_error(self, name):
        """{code, message} of a failed job's run (run history's RunDetails.error), or None.
        Private API: JobOperations._runs_operations."""
        error = self.ml.jobs._runs_operations.get_run_details(name).error
        root = getattr(error, "error", None)
        if root is None:
            return None
        return {"code": getattr(root, "code", None), "message": redact(getattr(root, "message", None) or "")}

    def log_urls(self, name):
        """{log file name: SAS URL}; the URLs carry secrets and must never be printed."""
        return dict(self.ml.jobs._runs_operations.get_run_details(name).log_files or {})

    def read_from(self, url, offset):
        """The bytes of a log blob from `offset` on (HTTP Range, azure-core retries)."""
        from azure.core import PipelineClient
        from azure.core.pipeline.policies import RetryPolicy
        from azure.core.rest import HttpRequest

        # no ContentDecodePolicy: the log is bytes, not JSON or XML
        client = PipelineClient(base_url=url, policies=[RetryPolicy(retry_total=3)])
        response = client.send_request(
            HttpRequest("GET", url, headers={"Range": f"bytes={offset}-"}))
        if response.status_code == 416:  # nothing past offset yet
            return b""
        response.raise_for_status()
        body = response.read()
        return body[offset:] if response.status_code == 200 else body

    def cancel(self, name):
        self.ml.jobs.begin_cancel(name).result()

    # sweep jobs (a search): the parent's run record and its trial runs -------------------------
    def run_record(self, name):
        """{status, start, end, tags, properties} of a job's run-history run (times in epoch
        seconds or None). A sweep's parent run carries its trials' sampled values as tags
        "<parent>_<index>": JSON, and the service's best trial as property best_child_run_id.
        Private API: JobOperations._runs_operations."""
        run = self.ml.jobs._runs_operations.get_run(name)
        return {"status": run.status, "start": _epoch(run.start_time_utc), "end": _epoch(run.end_time_utc),
                "tags": dict(run.tags or {}), "properties": dict(run.properties or {})}

    def child_runs(self, name):
        """The trial runs of a sweep job (run history's runs/{name}/children, every page), as
        [{name, status, start, end, error, tags, properties}], start and end
        in epoch seconds or None. Private API: the run-history client behind _runs_operations
        (its public wrapper turns each run into a Job entity and loses the times)."""
        ops = self.ml.jobs._runs_operations
        scope = ops._operation_scope
        rows = []
        for run in ops._operation.get_child(scope.subscription_id, scope.resource_group_name,
                                            ops._workspace_name, name):
            root = getattr(getattr(run, "error", None), "error", None)
            rows.append({"name": run.run_id or run.name, "status": run.status,
                         "start": _epoch(run.start_time_utc), "end": _epoch(run.end_time_utc),
                         "error": ({"code": getattr(root, "code", None),
                                    "message": redact(getattr(root, "message", None) or "")} if root else None),
                         "tags": dict(run.tags or {}), "properties": dict(run.properties or {})})
        return rows


    # after the run: attach, register, compute list (assets.py) -----------------------------
    def get_job(self, name):
        """{name, status, display_name, experiment, compute, instance_count, command, inputs,
        outputs ({name: {type, path}}), studio_url, created_at (epoch seconds)} or None."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            job = self.ml.jobs.get(name)
        except ResourceNotFoundError:
            return None
        return job_row(job)

    def list_clusters(self):
        """Every AmlCompute cluster of the workspace with its node counts (cluster_row).

        Private API: the Compute entity drops currentNodeCount and nodeStateCounts, so the REST
        objects of the SDK's own list call are read as well (ComputeOperations._operation)."""
        from azure.ai.ml.entities import Compute

        ops = self.ml.compute
        pages = ops._operation.list(self.settings.resource_group, self.settings.workspace_name,
                                    cls=lambda objs: [(Compute._from_rest_object(o), o) for o in objs])
        return [cluster_row(entity, rest) for entity, rest in pages
                if str(entity.type).lower() == "amlcompute"]

    def register_model(self, name, path, tags, description):
        """A custom_model asset at `path` (the job's output URI); {name, version, path}."""
        from azure.ai.ml.entities import Model

        model = self.ml.models.create_or_update(Model(name=name, path=path, type="custom_model",
                                                      tags=tags, description=description))
        return {"name": model.name, "version": model.version, "path": model.path}

    def register_data(self, name, path, tags, description):
        """A uri_folder data asset at `path` (an azureml://datastores/... URI); {name, version, path}."""
        from azure.ai.ml.entities import Data

        data = self.ml.data.create_or_update(Data(name=name, path=path, type="uri_folder",
                                                  tags=tags, description=description))
        return {"name": data.name, "version": data.version, "path": data.path}


def job_row(job):
    """Plain values of an azure.ai.ml Job (get_job)."""
    def ports(items):
        return {k: {"type": getattr(v, "type", None), "path": getattr(v, "path", None)}
                for k, v in (items or {}).items() if hasattr(v, "path")}
    compute = getattr(job, "compute", None)
    if compute and "/computes/" in compute:  # an ARM id: the cluster is its last segment
        compute = compute.rsplit("/", 1)[-1]
    created = getattr(getattr(job, "creation_context", None), "created_at", None)
    resources = getattr(job, "resources", None)
    return {"name": job.name, "status": _plain(job.status), "display_name": job.display_name,
            "experiment": job.experiment_name, "compute": compute,
            "instance_count": getattr(resources, "instance_count", None),
            "command": getattr(job, "command", None),
            "inputs": ports(getattr(job, "inputs", None)), "outputs": ports(getattr(job, "outputs", None)),
            "studio_url": job.studio_url, "created_at": created.timestamp() if created else None}


def cluster_row(entity, rest):
    """{name, size, tier, min_nodes, max_nodes, current_nodes, idle_nodes, busy_nodes, allocation,
    state} of an AmlCompute (entity: the SDK's; rest: its wire object, for the node counts)."""
    wire = rest.as_dict() if hasattr(rest, "as_dict") else {}
    inner = (wire.get("properties") or {}).get("properties") or {}
    counts = inner.get("nodeStateCounts") or inner.get("node_state_counts") or {}

    def count(camel):
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()
        value = counts.get(camel, counts.get(snake))
        return value if value is not None else 0
    current = inner.get("currentNodeCount", inner.get("current_node_count"))
    return {"name": entity.name, "size": getattr(entity, "size", None), "tier": getattr(entity, "tier", None),
            "min_nodes": getattr(entity, "min_instances", None), "max_nodes": getattr(entity, "max_instances", None),
            "current_nodes": current or 0, "idle_nodes": count("idleNodeCount"),
            "busy_nodes": count("runningNodeCount") + count("preparingNodeCount"),
            "allocation": inner.get("allocationState", inner.get("allocation_state")),
            "state": _plain(getattr(entity, "provisioning_state", None))}


def _epoch(moment):
    """Epoch seconds of a datetime the SDK deserialized (None stays None)."""
    return moment.timestamp() if moment is not None else None


def _plain(value):
    """The string of an SDK enum member (JobStatus.COMPLETED -> "Completed")."""
    return getattr(value, "value", value)


class azure_errors:
    """Context manager: Azure SDK exceptions become one-line ServiceErrors (exit 2), secrets removed.

    SAS tokens ride in URL query strings, so every query string is cut from the message.
    A refusal is worded for the plane that refused: the storage service (a datastore's blobs, a
    job's log) answers with an x-ms-error-code, and a rotated key or an expired SAS there is no
    login problem (storage.blob.refused says which credential, and what to do), although
    azure-storage-blob raises its AuthenticationFailed as the same ClientAuthenticationError that
    azure-identity and the management plane raise for a sign-in that failed.
    """

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        if exc is None or not isinstance(exc, AzureError):
            return False
        from ...storage.blob import refused, storage_error_code

        if storage_error_code(exc) and getattr(exc, "status_code", None) in (401, 403):
            raise refused(exc) from None
        if isinstance(exc, ClientAuthenticationError):
            # Azure AD: no credential at all (azure-identity, no response), or a token the
            # management plane refused (its code: InvalidAuthenticationToken, ExpiredAuthenticationToken)
            code = getattr(getattr(exc, "error", None), "code", None)
            raise ServiceError(f"Azure sign-in failed{f' ({code})' if code else ''}: run `az login` or set "
                            "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET") from None
        text = (getattr(exc, "message", None) or str(exc)).strip().splitlines()
        raise ServiceError(f"Azure: {redact(text[0] if text else type(exc).__name__)}") from None
