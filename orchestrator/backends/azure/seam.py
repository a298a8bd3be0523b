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
from collections.abc import Mapping
from functools import cached_property

from ...errors import UserError
from ...secrets import redact


def load_sdk():
    """Import azure.ai.ml and silence its INFO/"experimental class" chatter on stderr."""
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
    """Write `data` as the SDK writes its YAML files (OSError when `path` cannot be written)."""
    from azure.ai.ml._utils.utils import dump_yaml_to_file

    dump_yaml_to_file(str(path), data, default_flow_style=False)


class AzureSeam:
    """Network calls for one workspace (settings: settings.Settings)."""

    def __init__(self, settings, credential=None, transport=None):
        """credential: DefaultAzureCredential when None. transport: the azure-core HttpTransport
        the management clients send through (None: azure-core's default); the tests pass one that
        answers like the service, so the SDK's own serialization and polling run."""
        self.settings = settings
        self._credential = credential
        self._pipeline = {"transport": transport} if transport else {}

    @cached_property
    def credential(self):
        if self._credential is not None:
            return self._credential
        from azure.identity import DefaultAzureCredential

        # it logs every failed attempt of its chain at WARNING; azure_errors says it in one line
        logging.getLogger("azure.identity").setLevel(logging.ERROR)
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

    def delete_workspace(self, delete_dependent_resources):
        self.ml.workspaces.begin_delete(
            self.settings.workspace_name,
            delete_dependent_resources=delete_dependent_resources).result()

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
        return {"name": c.name, **{k: getattr(c, attr, None) for k, attr in keys.items()}}

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

    def container_client(self, datastore):
        """A ContainerClient on the datastore: the connection string when set, else Azure AD."""
        from azure.storage.blob import ContainerClient

        conn = self.settings.storage_connection_string
        if conn:
            return ContainerClient.from_connection_string(conn, datastore["container"])
        url = f"https://{datastore['account']}.blob.{datastore['endpoint']}"
        return ContainerClient(url, datastore["container"], credential=self.credential)

    # jobs ---------------------------------------------------------------------------------
    def submit(self, job):
        """Submit a command job; returns {name, studio_url}."""
        submitted = self.ml.jobs.create_or_update(job)
        return {"name": submitted.name, "studio_url": submitted.studio_url}

    def job_status(self, name):
        return self.ml.jobs.get(name).status

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


class azure_errors:
    """Context manager: Azure SDK exceptions become one-line UserErrors (exit 2), secrets removed.

    SAS tokens ride in URL query strings, so every query string is cut from the message.
    """

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        if exc is None or not isinstance(exc, AzureError):
            return False
        if isinstance(exc, ClientAuthenticationError):
            raise UserError("Azure sign-in failed: run `az login` or set AZURE_CLIENT_ID/"
                            "AZURE_TENANT_ID/AZURE_CLIENT_SECRET") from None
        text = (getattr(exc, "message", None) or str(exc)).strip().splitlines()
        raise UserError(f"Azure: {redact(text[0] if text else type(exc).__name__)}") from None
