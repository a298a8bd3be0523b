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
