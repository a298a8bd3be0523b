"""The one place that talks to Azure: a thin wrapper over MLClient and ResourceManagementClient.

Why a seam: the control plane cannot run without an Azure account, so tests swap this class for a
recording stand-in with the same methods and test everything around it for real. Keep it thin --
no decisions here, only calls and the translation of SDK objects into plain values (including the
azure-ai-ml 1.35 bug where list_usage/list_sizes leave snake_case fields None: notes section 2).
"""
import logging
from functools import cached_property

from ..errors import UserError
from ..secrets import redact
from . import load_sdk


def _field(obj, snake, camel):
    value = getattr(obj, snake, None)
    return value if value is not None else obj.__dict__.get(camel)


def usage_row(usage):
    """{name, current, limit} from an azure.ai.ml Usage, whichever shape the SDK filled in."""
    name = usage.name
    name = name.get("value") if isinstance(name, dict) else getattr(name, "value", name)
    return {"name": name, "current": _field(usage, "current_value", "currentValue") or 0,
            "limit": _field(usage, "limit", "limit") or 0}


def size_row(vm):
    """{name, family, vcpus} from an azure.ai.ml VmSize."""
    return {"name": vm.name, "family": _field(vm, "family", "family"),
            "vcpus": _field(vm, "v_cp_us", "vCPUs")}


class AzureSeam:
    """Network calls for one workspace (settings: orchestrator.config.Settings)."""

    def __init__(self, settings):
        self.settings = settings

    @cached_property
    def credential(self):
        from azure.identity import DefaultAzureCredential

        # it logs every failed attempt of its chain at WARNING; azure_errors says it in one line
        logging.getLogger("azure.identity").setLevel(logging.ERROR)
        return DefaultAzureCredential()

    @cached_property
    def ml(self):
        sdk = load_sdk()
        s = self.settings
        return sdk.MLClient(self.credential, s.subscription_id, s.resource_group,
                            s.workspace_name, show_progress=False)

    # resource group -----------------------------------------------------------------------
    def resource_group_exists(self):
        return self._resources.resource_groups.check_existence(self.settings.resource_group)

    def create_resource_group(self, location):
        self._resources.resource_groups.create_or_update(self.settings.resource_group,
                                                         {"location": location})

    @cached_property
    def _resources(self):
        from azure.mgmt.resource.resources import ResourceManagementClient

        return ResourceManagementClient(self.credential, self.settings.subscription_id)

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
        return [size_row(v) for v in self.ml.compute.list_sizes(location=location)]

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
