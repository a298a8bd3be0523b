"""The Azure ML management plane as an azure-core HttpTransport, for the REAL MLClient.

Why a transport and not a Python stand-in: what broke on real subscriptions was the shape of what
the service returns (usage names in prose, -1 limits, absent rows, upper-case vmSize) and how the
SDK reads it (the 1.35 camelCase bug, paging, LRO polling). Below this transport every SDK layer
runs -- request building, bearer-token policy, deserialization, Usage/VmSize/Compute entities,
ARM polling -- and only the network is replaced.

Bodies follow the service's documented examples (Azure/azure-rest-api-specs,
specification/machinelearningservices/resource-manager/Microsoft.MachineLearningServices/stable/
2024-04-01/examples/: Usage/list.json, VirtualMachineSize/list.json, Workspace/get.json,
Compute/get/AmlCompute.json, Compute/createOrUpdate/AmlCompute.json; see
/work/shared/notes/azure-rest-shapes.md), never our code's idea of them. DOCUMENTED_USAGES is an
excerpt of Usage/list.json as published, DS3_V2 an entry of VirtualMachineSize/list.json; the
builders below write further rows in the same shapes.
"""
import json
import re
import time
from urllib.parse import urlsplit

from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpResponse
from azure.core.utils import CaseInsensitiveDict

SUB = "00000000-0000-0000-0000-000000000000"  # the documented examples' subscription
TOKEN = "bearer-token-must-not-leak"
ML = "Microsoft.MachineLearningServices"


class StaticToken:
    """A credential that hands out one fixed bearer token (the transport checks it is sent)."""

    def get_token(self, *scopes, **kwargs):
        return AccessToken(TOKEN, int(time.time()) + 3600)


# --- documented bodies ---------------------------------------------------------------------------
# Usage/list.json, the rows of the DSv2 and NC families and the two regional totals, verbatim:
# the same family at subscription, workspace and cluster level; limit 0 (NCv3); limit -1 (the
# low-priority family rows). It has no NC T4 v3 or A100 row at all, like many new subscriptions.
DOCUMENTED_USAGES = [
    {"id": f"/subscriptions/{SUB}/usages", "type": f"{ML}/totalCores/usages", "currentValue": 7, "limit": 100,
     "name": {"localizedValue": "Clusters", "value": "Clusters"}, "unit": "Count"},
    {"id": f"/subscriptions/{SUB}/usages", "type": f"{ML}/dedicatedCores/usages", "currentValue": 14, "limit": 24,
     "name": {"localizedValue": "Total Cluster Dedicated Regional vCPUs",
              "value": "Total Cluster Dedicated Regional vCPUs"}, "unit": "Count"},
    {"id": f"/subscriptions/{SUB}/usages/Standard_DSv2_Family_Cluster_Dedicated_vCPUs",
     "type": f"{ML}/vmFamily/usages", "currentValue": 2, "limit": 24,
     "name": {"value": "Standard DSv2 Family Cluster Dedicated vCPUs",
              "localizedValue": "Standard DSv2 Family Cluster Dedicated vCPUs"}, "unit": "Count"},
    {"id": f"/subscriptions/{SUB}/resourceGroups/rg/providers/{ML}/workspaces/demo_workspace1/usages/"
           "Standard_DSv2_Family_Cluster_Dedicated_vCPUs",
     "type": f"{ML}/workspaces/usages", "currentValue": 2, "limit": 24,
     "name": {"value": "Standard DSv2 Family Cluster Dedicated vCPUs",
              "localizedValue": "Standard DSv2 Family Cluster Dedicated vCPUs"}, "unit": "Count"},
    {"id": f"/subscriptions/{SUB}/resourceGroups/rg/providers/{ML}/workspaces/demo_workspace1/computes/"
           "demo_cluster1_dsv2/usages/Standard_DSv2_Family_Cluster_Dedicated_vCPUs",
     "type": f"{ML}/workspaces/computes/usages", "currentValue": 2, "limit": 24,
     "name": {"value": "Standard DSv2 Family Cluster Dedicated vCPUs",
              "localizedValue": "Standard DSv2 Family Cluster Dedicated vCPUs"}, "unit": "Count"},
    {"id": f"/subscriptions/{SUB}/usages/Standard_NC_Family_Cluster_Dedicated_vCPUs",
     "type": f"{ML}/vmFamily/usages", "currentValue": 12, "limit": 24,
     "name": {"localizedValue": "Standard NC Family Cluster Dedicated vCPUs",
              "value": "Standard NC Family Cluster Dedicated vCPUs"}, "unit": "Count"},
    {"id": f"/subscriptions/{SUB}/resourceGroups/rg/providers/{ML}/workspaces/demo_workspace1/usages/"
           "Standard_NC_Family_Cluster_Dedicated_vCPUs",
     "type": f"{ML}/workspace/usages", "currentValue": 6, "limit": 24,
     "name": {"localizedValue": "Standard NC Family Cluster Dedicated vCPUs",
              "value": "Standard NC Family Cluster Dedicated vCPUs"}, "unit": "Count"},
    {"id": f"/subscriptions/{SUB}/usages/Standard_NCv3_Family_Cluster_Dedicated_vCPUs",
     "type": f"{ML}/vmFamily/usages", "currentValue": 0, "limit": 0,
     "name": {"localizedValue": "Standard NCv3 Family Cluster Dedicated vCPUs",
              "value": "Standard NCv3 Family Cluster Dedicated vCPUs"}, "unit": "Count"},
    {"id": f"/subscriptions/{SUB}/usages", "type": f"{ML}/lowPriorityCores/usages", "currentValue": 18, "limit": 50,
     "name": {"localizedValue": "Total Cluster LowPriority Regional vCPUs",
              "value": "Total Cluster LowPriority Regional vCPUs"}, "unit": "Count"},
    {"id": f"/subscriptions/{SUB}/usages/Standard_DSv2_Family_Cluster_LowPriority_vCPUs",
     "type": f"{ML}/vmFamily/usages", "currentValue": 0, "limit": -1,
     "name": {"localizedValue": "Standard DSv2 Family Cluster LowPriority vCPUs",
              "value": "Standard DSv2 Family Cluster LowPriority vCPUs"}, "unit": "Count"},
    {"id": f"/subscriptions/{SUB}/usages/Standard_NC_Family_Cluster_LowPriority_vCPUs",
     "type": f"{ML}/vmFamily/usages", "currentValue": 18, "limit": -1,
     "name": {"localizedValue": "Standard NC Family Cluster LowPriority vCPUs",
              "value": "Standard NC Family Cluster LowPriority vCPUs"}, "unit": "Count"},
]

# VirtualMachineSize/list.json, its Standard_DS3_v2 entry verbatim (Azure ML's default CPU size)
DS3_V2 = {
    "name": "Standard_DS3_v2", "family": "standardDSv2Family", "vCPUs": 4, "gpus": 0,
    "osVhdSizeMB": 1047552, "maxResourceVolumeMB": 28672, "memoryGB": 14.0,
    "lowPriorityCapable": True, "premiumIO": True,
    "estimatedVMPrices": {"billingCurrency": "USD", "unitOfMeasure": "OneHour", "values": [
        {"retailPrice": 0.2, "osType": "Windows", "vmTier": "LowPriority"},
        {"retailPrice": 0.06, "osType": "Linux", "vmTier": "LowPriority"},
        {"retailPrice": 0.5, "osType": "Windows", "vmTier": "Standard"},
        {"retailPrice": 0.29, "osType": "Linux", "vmTier": "Standard"}]},
    "supportedComputeTypes": ["AmlCompute", "ComputeInstance", "MIR"],
}


def family_usage(family, tier, current, limit, workspace=None):
    """A vmFamily usage row as the service writes it: family "NCASv3_T4", tier "Dedicated" or
    "LowPriority"; with `workspace`, that workspace's share of it (same name, deeper id)."""
    prose = f"Standard {family} Family Cluster {tier} vCPUs"
    scope = f"/subscriptions/{SUB}"
    kind = f"{ML}/vmFamily/usages"
    if workspace:
        scope += f"/resourceGroups/rg/providers/{ML}/workspaces/{workspace}"
        kind = f"{ML}/workspaces/usages"
    return {"id": f"{scope}/usages/{prose.replace(' ', '_')}", "type": kind, "currentValue": current,
            "limit": limit, "name": {"value": prose, "localizedValue": prose}, "unit": "Count"}


def regional_usage(tier, current, limit):
    """A regional total row: tier "Dedicated" (dedicatedCores) or "LowPriority" (lowPriorityCores)."""
    kind = "dedicatedCores" if tier == "Dedicated" else "lowPriorityCores"
    prose = f"Total Cluster {tier} Regional vCPUs"
    return {"id": f"/subscriptions/{SUB}/usages", "type": f"{ML}/{kind}/usages", "currentValue": current,
            "limit": limit, "name": {"value": prose, "localizedValue": prose}, "unit": "Count"}


def vm_size(name, family, vcpus, gpus, memory_gb, linux, linux_low, low_priority_capable=True):
    """A vmSizes entry in the documented shape, with Windows prices unlike the Linux ones."""
    return {"name": name, "family": family, "vCPUs": vcpus, "gpus": gpus, "osVhdSizeMB": 1047552,
            "maxResourceVolumeMB": 180224, "memoryGB": memory_gb,
            "lowPriorityCapable": low_priority_capable, "premiumIO": True,
            "estimatedVMPrices": {"billingCurrency": "USD", "unitOfMeasure": "OneHour", "values": [
                {"retailPrice": linux, "osType": "Linux", "vmTier": "Standard"},
                {"retailPrice": linux_low, "osType": "Linux", "vmTier": "LowPriority"},
                {"retailPrice": round(linux * 1.5 + 0.07, 2), "osType": "Windows", "vmTier": "Standard"},
                {"retailPrice": round(linux_low * 1.5 + 0.07, 2), "osType": "Windows", "vmTier": "LowPriority"}]},
            "supportedComputeTypes": ["AmlCompute", "ComputeInstance"]}


# US Linux pay-as-you-go figures of the notes; low-priority about a fifth
GPU_SIZES = [
    vm_size("Standard_NC4as_T4_v3", "standardNCASv3_T4Family", 4, 1, 28.0, 0.526, 0.105),
    vm_size("Standard_NC8as_T4_v3", "standardNCASv3_T4Family", 8, 1, 56.0, 0.752, 0.150),
    vm_size("Standard_NC16as_T4_v3", "standardNCASv3_T4Family", 16, 1, 110.0, 1.204, 0.241),
    vm_size("Standard_NC64as_T4_v3", "standardNCASv3_T4Family", 64, 4, 440.0, 4.352, 0.870),
    vm_size("Standard_NC24ads_A100_v4", "standardNCADSA100v4Family", 24, 1, 220.0, 3.673, 0.735),
    vm_size("Standard_NC48ads_A100_v4", "standardNCADSA100v4Family", 48, 2, 440.0, 7.346, 1.469),
]


# --- the transport -----------------------------------------------------------------------------
class Response(HttpResponse):
    """A complete, already-read azure.core.rest.HttpResponse (what the SDK's pipeline expects)."""

    def __init__(self, request, status, body=None, headers=None):
        self._request, self._status = request, status
        self._content = b"" if body is None else json.dumps(body).encode()
        # HTTP header names are case-insensitive; the pollers look them up in lower case
        self._headers = CaseInsensitiveDict({"Content-Type": "application/json; charset=utf-8", **(headers or {})})

    request = property(lambda self: self._request)
    url = property(lambda self: self._request.url)
    status_code = property(lambda self: self._status)
    headers = property(lambda self: self._headers)
    reason = property(lambda self: "OK" if self._status < 400 else "Error")
    content_type = property(lambda self: self._headers["Content-Type"])
    is_closed = property(lambda self: True)
    is_stream_consumed = property(lambda self: True)
    encoding = property(lambda self: "utf-8")
    content = property(lambda self: self._content)

    def text(self, encoding=None):
        return self._content.decode()

    def json(self):
        return json.loads(self._content)

    def raise_for_status(self):
        if self._status >= 400:
            raise HttpResponseError(response=self)

    def read(self):
        return self._content

    def iter_bytes(self, **kwargs):
        yield self._content

    def iter_raw(self, **kwargs):
        yield self._content

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass


def _not_found(request, what):
    return Response(request, 404, {"error": {"code": "ResourceNotFound",
                                             "message": f"The Resource '{what}' was not found."}})


class ManagementPlane(HttpTransport):
    """management.azure.com for one subscription, resource group and workspace.

    State the tests set: `workspace` (None: 404), `usages`, `vm_sizes`, `computes` (name -> body),
    `polls` (how many times a create's operation status says InProgress). `requests` records
    (method, path) of everything that arrived, `puts` the bodies sent with PUT, `slept` the waits
    of the LRO poller.
    """

    def __init__(self, resource_group="rg", workspace="ws", location="eastus"):
        self.resource_group, self.location = resource_group, location
        self.workspace = workspace
        self.usages = list(DOCUMENTED_USAGES)
        self.vm_sizes = [DS3_V2, *GPU_SIZES]
        self.computes = {}
        self.polls = 1
        self.requests = []
        self.puts = []
        self.slept = []
        self._operations = {}  # operation id -> [compute name, polls left]

    def open(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def sleep(self, duration):
        """The LRO poller waits through its transport: record the Retry-After it obeyed, do not wait."""
        self.slept.append(duration)

    @property
    def _workspace_path(self):
        return f"/subscriptions/{SUB}/resourceGroups/{self.resource_group}/providers/{ML}/workspaces/{self.workspace}"

    def send(self, request, **kwargs):
        url = urlsplit(request.url)
        path, method = url.path, request.method
        self.requests.append((method, path))
        if path.endswith("/discovery") and method == "GET":  # unauthenticated, like the service's
            return serve_discovery(self, request)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return Response(request, 401, {"error": {"code": "AuthenticationFailed",
                                                     "message": "Authentication failed."}})
        region = re.fullmatch(rf"/subscriptions/{SUB}/providers/{ML}/locations/([^/]+)/(usages|vmSizes)", path)
        if region and method == "GET":
            rows = self.usages if region.group(2) == "usages" else self.vm_sizes
            return Response(request, 200, {"value": rows if region.group(1) == self.location else []})
        status = re.fullmatch(rf"/subscriptions/{SUB}/providers/{ML}/locations/[^/]+/computeOperationsStatus/(.+)", path)
        if status and method == "GET":
            return self._operation_status(request, status.group(1))
        if self.workspace and path == self._workspace_path and method == "GET":
            return Response(request, 200, self._workspace_body())
        compute = re.fullmatch(re.escape(self._workspace_path) + r"/computes/([^/]+)", path) if self.workspace else None
        if compute and method == "GET":
            found = self.computes.get(compute.group(1))
            return Response(request, 200, found) if found else _not_found(request, compute.group(1))
        if compute and method == "PUT":
            return self._create_compute(request, compute.group(1))
        if not self.workspace and path.startswith(f"/subscriptions/{SUB}/resourceGroups/"):
            return _not_found(request, path.rsplit("/", 1)[-1])
        job_route = serve_jobs(self, request, method, path) if self.workspace else None
        if job_route is not None:
            return job_route
        datastore_route = serve_datastores(self, request, method, path) if self.workspace else None
        if datastore_route is not None:
            return datastore_route
        asset_route = serve_assets(self, request, method, path) if self.workspace else None
        if asset_route is not None:
            return asset_route
        raise AssertionError(f"the test's management plane does not serve {method} {request.url}")

    def _workspace_body(self):
        """Workspace/get.json, cut to what a plain workspace has."""
        return {"id": self._workspace_path, "name": self.workspace, "type": f"{ML}/workspaces",
                "location": self.location, "identity": {"type": "SystemAssigned"},
                "properties": {"friendlyName": self.workspace, "hbiWorkspace": False,
                               "provisioningState": "Succeeded",
                               "storageAccount": f"/subscriptions/{SUB}/resourceGroups/{self.resource_group}/"
                                                 "providers/Microsoft.Storage/storageAccounts/wsstorage",
                               "discoveryUrl": f"https://{self.location}.api.azureml.ms/discovery"}}

    def _create_compute(self, request, name):
        """Compute/createOrUpdate/AmlCompute.json's 201: accepted, provisioning follows at the
        Azure-AsyncOperation URL; the service echoes vmSize in upper case."""
        sent = json.loads(request.content)
        self.puts.append(sent)
        inner = dict(sent["properties"].get("properties") or {})
        inner.update(vmSize=(inner.get("vmSize") or "").upper(), allocationState="Steady", errors=None,
                     currentNodeCount=0, targetNodeCount=0,
                     nodeStateCounts={"preparingNodeCount": 0, "runningNodeCount": 0, "idleNodeCount": 0,
                                      "unusableNodeCount": 0, "leavingNodeCount": 0, "preemptedNodeCount": 0})
        self.computes[name] = {
            "id": f"{self._workspace_path}/computes/{name}", "name": name, "type": f"{ML}/workspaces/computes",
            "location": sent.get("location") or self.location,
            "properties": {**sent["properties"], "provisioningState": "Creating", "properties": inner,
                           "createdOn": "2026-11-23T14:25:00.0000000+00:00"}}
        operation = f"op-{len(self._operations) + 1}"
        self._operations[operation] = [name, self.polls]
        status_url = (f"https://management.azure.com/subscriptions/{SUB}/providers/{ML}/locations/"
                      f"{self.location}/computeOperationsStatus/{operation}?api-version=2024-04-01&service=new")
        accepted = {k: v for k, v in self.computes[name].items() if k != "properties"}
        accepted["properties"] = {"computeType": sent["properties"]["computeType"], "provisioningState": "Creating"}
        return Response(request, 201, accepted, {"Azure-AsyncOperation": status_url, "Retry-After": "10"})

    def _operation_status(self, request, operation):
        if operation not in self._operations:
            return _not_found(request, operation)
        name, left = self._operations[operation]
        if left > 0:
            self._operations[operation][1] -= 1
            return Response(request, 200, {"id": operation, "name": operation, "status": "InProgress"},
                            {"Retry-After": "10"})
        self.computes[name]["properties"]["provisioningState"] = "Succeeded"
        return Response(request, 200, {"id": operation, "name": operation, "status": "Succeeded",
                                       "startTime": "2026-11-23T14:25:01Z", "endTime": "2026-11-23T14:25:40Z"})


# --- jobs, run history, compute allocation (the job lifecycle) -------------------------------------
# Bodies in the shapes of Job/CommandJob/createOrUpdate.json and get.json (2024-04-01 examples), of
# Compute/get/AmlCompute.json (allocationState, currentNodeCount, targetNodeCount, nodeStateCounts,
# errors) and of run history's RunDetails (runs/{id}/details: status, error = ErrorResponse
# {"error": {"code", "message", ...}}, logFiles = {name: SAS URL}). State lives on the plane:
# plane.jobs (name -> body), plane.run_errors (name -> error body), plane.log_files (name -> dict).
def aml_compute(name, size="STANDARD_NC16AS_T4_V3", state="Succeeded", allocation="Steady",
                current=0, target=0, errors=None, max_nodes=1, tier="Dedicated", preparing=0, running=0,
                resource_group="rg", workspace="ws"):
    """A compute GET body (Compute/get/AmlCompute.json): provisioningState, allocationState, node
    counts, errors (a list of {"error": {"code", "message"}}, as provisioningErrors are written)."""
    return {
        "id": f"/subscriptions/{SUB}/resourceGroups/{resource_group}/providers/{ML}/workspaces/{workspace}/computes/{name}",
        "name": name, "type": f"{ML}/workspaces/computes", "location": "eastus",
        "properties": {
            "computeType": "AmlCompute", "provisioningState": state, "provisioningErrors": errors,
            "isAttachedCompute": False, "createdOn": "2026-11-23T14:25:00.0000000+00:00",
            "properties": {
                "vmSize": size, "vmPriority": tier, "osType": "Linux",
                "scaleSettings": {"maxNodeCount": max_nodes, "minNodeCount": 0,
                                  "nodeIdleTimeBeforeScaleDown": "PT10M"},
                "allocationState": allocation, "allocationStateTransitionTime": "2026-11-23T14:30:00Z",
                "errors": errors, "currentNodeCount": current, "targetNodeCount": target,
                "nodeStateCounts": {"preparingNodeCount": preparing, "runningNodeCount": running,
                                    "idleNodeCount": 0, "unusableNodeCount": 0, "leavingNodeCount": 0,
                                    "preemptedNodeCount": 0}}}}


def compute_error(code, message):
    """One entry of a compute's provisioningErrors / errors (ErrorResponse)."""
    return {"error": {"code": code, "message": message}}


def run_error(code, message):
    """Run history's ErrorResponse of a failed run (RunDetails.error)."""
    return {"error": {"code": code, "severity": None, "message": message, "messageFormat": None,
                      "messageParameters": {}, "referenceCode": None, "detailsUri": None,
                      "target": None, "details": [], "innerError": None, "additionalInfo": []},
            "correlation": {"operation": "ab12", "request": "cd34"}, "environment": "eastus",
            "location": "eastus", "time": "2026-11-23T15:00:00Z", "componentName": "CommonRuntime"}


def _job_state(plane):
    for attr, empty in (("jobs", dict), ("run_errors", dict), ("log_files", dict), ("job_puts", list)):
        if not hasattr(plane, attr):
            setattr(plane, attr, empty())
    return plane


def serve_jobs(plane, request, method, path):
    """The job routes of the management plane and of run history; None for any other request.

    PUT/GET .../workspaces/ws/jobs/{name} (GET 404 before the create: ResourceNotFound), POST
    .../jobs/{name}/cancel (202 with a Location the poller follows), the discovery document, and
    run history's GET .../runs/{name}/details.
    """
    _job_state(plane)
    prefix = re.escape(plane._workspace_path)
    job = re.fullmatch(prefix + r"/jobs/([^/]+)", path)
    if job and method == "GET":
        found = plane.jobs.get(job.group(1))
        return Response(request, 200, found) if found else _not_found(request, job.group(1))
    if job and method == "PUT":
        return _create_job(plane, request, job.group(1))
    cancel = re.fullmatch(prefix + r"/jobs/([^/]+)/cancel", path)
    if cancel and method == "POST":
        name = cancel.group(1)
        if name not in plane.jobs:
            return _not_found(request, name)
        plane.jobs[name]["properties"]["status"] = "CancelRequested"
        location = (f"https://management.azure.com/subscriptions/{SUB}/providers/{ML}/locations/"
                    f"{plane.location}/mfeOperationResults/jc:{name}?api-version=2023-02-01-preview")
        return Response(request, 202, None, {"Location": location, "Retry-After": "0"})
    if re.fullmatch(rf"/subscriptions/{SUB}/providers/{ML}/locations/[^/]+/mfeOperationResults/.+", path):
        return Response(request, 200, None)
    details = re.fullmatch(r"/history/v1\.0" + prefix + r"/runs/([^/]+)/details", path, re.IGNORECASE)
    if details and method == "GET":
        name = details.group(1)
        if name not in plane.jobs:
            return _not_found(request, name)
        body = {"runId": name, "runUuid": "0b8c3a2e-6a4f-4c1e-9b8d-1a2b3c4d5e6f", "target": "gpu",
                "status": plane.jobs[name]["properties"]["status"], "warnings": [], "tags": {},
                "properties": {}, "logFiles": plane.log_files.get(name, {})}
        if name in plane.run_errors:
            body["error"] = plane.run_errors[name]
        return Response(request, 200, body)
    return None


def serve_discovery(plane, request):
    """The workspace's discoveryUrl document: the regional base URLs (run history's is `api`);
    the SDK fetches it without a bearer token."""
    base = f"https://{plane.location}.api.azureml.ms"
    return Response(request, 200, {"api": base, "catalog": base, "experimentation": base,
                                   "history": base, "modelmanagement": base, "pipelines": base,
                                   "studiometadata": base})


def _create_job(plane, request, name):
    """Job/CommandJob/createOrUpdate.json: the body as sent, with status NotStarted, an id and the
    Studio service endpoint; 201 for a new job, 200 for an existing one (the service accepts a PUT
    on an existing name: a second create is not a no-op)."""
    sent = json.loads(request.content)
    plane.job_puts.append((name, sent))
    properties = {**sent["properties"], "status": "NotStarted",
                  "services": {"Studio": {"jobServiceType": "Studio", "endpoint":
                                          f"https://ml.azure.com/runs/{name}?wsid={plane._workspace_path}"}}}
    created = name not in plane.jobs
    plane.jobs[name] = {"id": f"{plane._workspace_path}/jobs/{name}", "name": name,
                        "type": f"{ML}/workspaces/jobs", "properties": properties,
                        "systemData": {"createdAt": "2026-11-23T14:40:00Z", "createdBy": "user",
                                       "createdByType": "User"}}
    return Response(request, 201 if created else 200, plane.jobs[name])


def set_job_status(plane, name, status, error=None):
    """What the service would report next for job `name` (and its run's error, when Failed)."""
    plane.jobs[name]["properties"]["status"] = status
    if error is not None:
        plane.run_errors[name] = error


# --- datastores (storage access) -----------------------------------------------------------------
# Bodies in the shapes of Datastore/get.json (credentials carry only their type: the secret itself
# is never in a GET) and Datastore/listSecrets.json ({"secretsType": "AccountKey", "key": ...};
# a SAS datastore answers {"secretsType": "Sas", "sasToken": ...}). An identity-based datastore has
# credentials {"credentialsType": "None"}, and the SDK asks no secrets for it.
# State lives on the plane: plane.datastores (name -> body), plane.datastore_secrets (name -> the
# listSecrets body), plane.secret_requests (the names whose secrets were asked for).
def datastore_body(name, account, container, kind="AccountKey", default=True, protocol="https",
                   endpoint="core.windows.net", resource_group="rg", workspace="ws"):
    """A blob datastore GET body; kind: "AccountKey", "Sas" or "None" (identity-based)."""
    credentials = {"credentialsType": kind}
    if kind != "None":
        credentials["secrets"] = {"secretsType": kind}
    return {
        "id": f"/subscriptions/{SUB}/resourceGroups/{resource_group}/providers/{ML}/workspaces/{workspace}"
              f"/datastores/{name}",
        "name": name, "type": f"{ML}/workspaces/datastores",
        "properties": {"description": None, "tags": {}, "isDefault": default, "properties": None,
                       "credentials": credentials, "datastoreType": "AzureBlob", "accountName": account,
                       "containerName": container, "endpoint": endpoint, "protocol": protocol,
                       "serviceDataAccessAuthIdentity": "None"},
        "systemData": {"createdAt": "2026-11-23T14:00:00.000Z", "createdBy": "someone@example.com",
                       "createdByType": "User", "lastModifiedAt": "2026-11-23T14:00:00.000Z",
                       "lastModifiedBy": "someone@example.com", "lastModifiedByType": "User"}}


def blob_container(azurite, name, empty=False):
    """A ContainerClient with the account key on Azurite's container `name`, created if missing
    (emptied with `empty`): the storage behind a test plane's datastore."""
    from azure.storage.blob import ContainerClient

    admin = ContainerClient.from_connection_string(azurite.connection_string, name)
    if not admin.exists():
        admin.create_container()
    for blob in admin.list_blobs() if empty else ():
        admin.delete_blob(blob.name)
    return admin


def add_datastore(plane, body, key=None, sas_token=None):
    """Serve `body` (datastore_body) and, for a key or SAS datastore, its listSecrets answer."""
    _datastore_state(plane)
    plane.datastores[body["name"]] = body
    if key is not None:
        plane.datastore_secrets[body["name"]] = {"secretsType": "AccountKey", "key": key}
    if sas_token is not None:
        plane.datastore_secrets[body["name"]] = {"secretsType": "Sas", "sasToken": sas_token}


def _datastore_state(plane):
    for attr, empty in (("datastores", dict), ("datastore_secrets", dict), ("secret_requests", list)):
        if not hasattr(plane, attr):
            setattr(plane, attr, empty())
    return plane


def serve_datastores(plane, request, method, path):
    """GET .../datastores (the SDK's get_default lists with isDefault=true), GET
    .../datastores/{name}, POST .../datastores/{name}/listSecrets; None for any other request."""
    _datastore_state(plane)
    base = re.escape(plane._workspace_path) + r"/datastores"
    if re.fullmatch(base, path) and method == "GET":
        default = "isDefault=true" in (urlsplit(request.url).query or "").lower()
        rows = [b for b in plane.datastores.values() if b["properties"]["isDefault"] or not default]
        return Response(request, 200, {"value": rows})
    one = re.fullmatch(base + r"/([^/]+)", path)
    if one and method == "GET":
        found = plane.datastores.get(one.group(1))
        return Response(request, 200, found) if found else _not_found(request, one.group(1))
    secrets = re.fullmatch(base + r"/([^/]+)/listSecrets", path)
    if secrets and method == "POST":
        plane.secret_requests.append(secrets.group(1))
        found = plane.datastore_secrets.get(secrets.group(1))
        return Response(request, 200, found) if found else _not_found(request, secrets.group(1))
    return None


# --- model and data assets, the compute list (after the run) --------------------------------------
# Bodies in the shapes of Workspace/ModelVersion/createOrUpdate.json ({"properties": {"modelType":
# "CustomModel", "modelUri", "tags", "description", "isAnonymous"}, "systemData"}), ModelContainer/
# get.json ({"properties": {"latestVersion", "nextVersion"}}), DataVersionBase/createOrUpdate.json
# ({"properties": {"dataType": "uri_folder", "dataUri", ...}}) and Compute/list.json ({"value":
# [compute GET bodies]}). State on the plane: plane.asset_versions ((kind, name) -> {version: body}),
# plane.asset_puts ((kind, name, version, body sent)).
def _asset_state(plane):
    for attr, empty in (("asset_versions", dict), ("asset_puts", list)):
        if not hasattr(plane, attr):
            setattr(plane, attr, empty())
    return plane


def serve_assets(plane, request, method, path):
    """models/data containers and versions, and GET .../computes (the list); None otherwise."""
    _asset_state(plane)
    prefix = re.escape(plane._workspace_path)
    if re.fullmatch(prefix + r"/computes", path) and method == "GET":
        return Response(request, 200, {"value": list(plane.computes.values())})
    container = re.fullmatch(prefix + r"/(models|data)/([^/]+)", path)
    if container and method == "GET":
        kind, name = container.groups()
        versions = plane.asset_versions.get((kind, name))
        if not versions:
            return _not_found(request, name)
        latest = max(versions, key=int)
        return Response(request, 200, {"id": f"{plane._workspace_path}/{kind}/{name}", "name": name,
                                       "type": f"{ML}/workspaces/{kind}",
                                       "properties": {"latestVersion": latest, "nextVersion": str(int(latest) + 1),
                                                      "isArchived": False, "tags": {}, "properties": {}}})
    listing = re.fullmatch(prefix + r"/(models|data)/([^/]+)/versions", path)
    if listing and method == "GET":
        kind, name = listing.groups()
        versions = plane.asset_versions.get((kind, name), {})
        rows = [versions[v] for v in sorted(versions, key=int, reverse=True)]
        return Response(request, 200, {"value": rows})
    version = re.fullmatch(prefix + r"/(models|data)/([^/]+)/versions/([^/]+)", path)
    if version and method == "PUT":
        kind, name, number = version.groups()
        sent = json.loads(request.content)
        plane.asset_puts.append((kind, name, number, sent))
        body = {"id": f"{plane._workspace_path}/{kind}/{name}/versions/{number}", "name": number,
                "type": f"{ML}/workspaces/{kind}/versions", "properties": {"flavors": {}, **sent["properties"], "isAnonymous": False},
                "systemData": {"createdAt": "2026-11-23T16:00:00Z", "createdBy": "user", "createdByType": "User"}}
        created = number not in plane.asset_versions.setdefault((kind, name), {})
        plane.asset_versions[(kind, name)][number] = body
        return Response(request, 201 if created else 200, body)
    if version and method == "GET":
        kind, name, number = version.groups()
        found = plane.asset_versions.get((kind, name), {}).get(number)
        return Response(request, 200, found) if found else _not_found(request, name)
    return None


def command_job(name, status="Completed", compute="gpu-t4", nodes=1, data_uri=None, model_uri=None,
                command=None, display_name=None, experiment="orchestrate"):
    """A command job GET body (Job/CommandJob/get.json), as a job started elsewhere has it."""
    ws = f"/subscriptions/{SUB}/resourceGroups/rg/providers/{ML}/workspaces/ws"
    outputs = {}
    if model_uri is not None:
        outputs["model"] = {"jobOutputType": "uri_folder", "mode": "ReadWriteMount", "uri": model_uri}
    inputs = {}
    if data_uri is not None:
        inputs["data"] = {"jobInputType": "uri_folder", "mode": "ReadOnlyMount", "uri": data_uri}
    return {"id": f"{ws}/jobs/{name}", "name": name, "type": f"{ML}/workspaces/jobs",
            "properties": {"description": "started in Studio", "tags": {}, "properties": {},
                           "displayName": display_name or name, "status": status, "experimentName": experiment,
                           "services": {"Studio": {"jobServiceType": "Studio",
                                                   "endpoint": f"https://ml.azure.com/runs/{name}?wsid={ws}"}},
                           "computeId": f"{ws}/computes/{compute}", "jobType": "Command",
                           "resources": {"instanceCount": nodes},
                           "codeId": f"{ws}/codes/abc/versions/1",
                           "command": command or "python train.py", "environmentId": f"{ws}/environments/e/versions/1",
                           "inputs": inputs, "outputs": outputs,
                           "limits": {"timeout": "PT24H", "jobLimitsType": "Command"},
                           "environmentVariables": {}, "identity": None},
            "systemData": {"createdAt": "2026-11-23T14:40:00Z", "createdBy": "someone", "createdByType": "User",
                           "lastModifiedAt": "2026-11-23T15:40:00Z", "lastModifiedBy": "someone",
                           "lastModifiedByType": "User"}}


def code_and_environment_as_arm_ids(monkeypatch):
    """Submit code and environment as ARM ids of the workspace (as one that has them): the SDK then
    uploads nothing of its own, so every request of a submit, a command job's or a sweep's, goes to
    the test's management plane."""
    from orchestrator.backends.azure import job, sweep_job

    ws = f"/subscriptions/{SUB}/resourceGroups/rg/providers/{ML}/workspaces/ws"
    built_job, built_sweep = job.build_job, sweep_job.build_sweep

    def as_arm_ids(command):
        command.code = f"{ws}/codes/remote-scripts/versions/1"
        command.environment = f"{ws}/environments/orchestrate/versions/1"
        return command

    def build_sweep(plan):
        sweep = built_sweep(plan)
        as_arm_ids(sweep.trial)
        return sweep
    monkeypatch.setattr(job, "build_job", lambda plan: as_arm_ids(built_job(plan)))
    monkeypatch.setattr(sweep_job, "build_sweep", build_sweep)


def notices(lines):
    """An on_event that keeps the messages of the notice events in `lines` (other events, such as an
    upload's transfer progress, are not lines of text): what a backend told its user, in order."""
    def on_event(event):
        if event["type"] == "notice":
            lines.append(event["message"])
    return on_event


# --- run history: a job's run and its child runs (their start and end times) ---------------------
# Bodies in the wire names of azure-ai-ml's runhistory client (models.Run, the body of GET
# /history/v1.0/<workspace>/runs/{id}; runs/{id}/children answers PaginatedRunList {value,
# continuationToken, nextLink} of the same): runId, parentRunId, status, startTimeUtc, endTimeUtc
# (set when the run starts and ends on its nodes; null before), tags, properties. A command job's
# run is its own; a sweep's children are its trials; a pipeline's children are its steps.
def history_time(seconds):
    """An epoch time as run history writes it (ISO 8601, UTC, fractional seconds)."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def history_run(name, status, start=None, end=None, parent=None, target="gpu-t4"):
    """A run-history Run record; start and end in epoch seconds (None: not started / not ended)."""
    return {"runId": name, "parentRunId": parent, "rootRunId": parent or name, "runUuid": f"uuid-{name}",
            "status": status, "startTimeUtc": history_time(start) if start else None,
            "endTimeUtc": history_time(end) if end else None, "tags": {}, "properties": {},
            "cancelationReason": None, "error": None, "runType": "azureml.scriptrun", "target": target,
            "displayName": name, "experimentId": "4d1c2e7a-0000-0000-0000-000000000001"}


class RunHistoryPlane(ManagementPlane):
    """The management plane plus run history's GET runs/{id} and runs/{id}/children.

    State the tests set: `runs` (name -> history_run body), `children` (parent -> [child names]).
    A run not in `runs` is 404, as the service answers for an unknown run id."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _job_state(self)
        self.runs, self.children = {}, {}

    def send(self, request, **kwargs):
        url = urlsplit(request.url)
        base = f"/history/v1.0{self._workspace_path}/runs/"
        if request.method != "GET" or not url.path.startswith(base):
            return super().send(request, **kwargs)
        self.requests.append(("GET", url.path))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return Response(request, 401, {"error": {"code": "AuthenticationFailed", "message": "Authentication failed."}})
        name, *rest = url.path[len(base):].split("/")
        if name not in self.runs:
            return _not_found(request, name)
        if rest == ["children"]:
            return Response(request, 200, {"value": [self.runs[c] for c in self.children.get(name, [])],
                                           "continuationToken": None, "nextLink": None})
        if not rest:
            return Response(request, 200, self.runs[name])
        return super().send(request, **kwargs)
