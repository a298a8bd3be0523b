"""Workspace and compute provisioning: idempotent, quota-checked, priced, scale-to-zero by default.

Why a plan before a cluster: an AmlCompute create succeeds even with zero quota for its VM family,
and the failure only shows when a job waits forever for nodes; and a GPU size's price is easy to
misjudge. So before anything is created the user sees one plan -- size, GPUs, the service's own
hourly price estimates, the cost at max nodes, and every quota the cluster draws on -- and a
shortfall stops there with one line naming the quota to request.

The quota rules follow the service's documented shapes (notes/azure-rest-shapes.md), not guesses:
usage rows name a family in prose ("Standard NCASv3_T4 Family Cluster Dedicated vCPUs") where
`VmSize.family` says `standardNCASv3_T4Family`, so both are normalised before comparing; the quota
is the subscription-level row (the same name also appears per workspace and per cluster); the
regional total binds too; a family with no row has no quota (new subscriptions); limit -1 means
no family-level limit (the low-priority family rows).
"""
import re
from dataclasses import dataclass

from ... import events
from ...errors import UsageError
from .catalogue import Size, catalogue
from .seam import load_sdk
from .settings import studio_url

QUOTA_URL = "https://portal.azure.com/#view/Microsoft_Azure_Capacity/QuotaMenuBlade/~/myQuotas"
DEFAULT_IDLE_MINUTES = 10
# the regional totals, as the service names them (usage rows of type dedicatedCores/lowPriorityCores)
REGIONAL_QUOTA = {False: "Total Cluster Dedicated Regional vCPUs",
                  True: "Total Cluster LowPriority Regional vCPUs"}
# the subscription's own rows: id /subscriptions/SUB/usages[/Family_Row]; workspace and cluster
# rows (ids under resourceGroups/...) repeat a family's name with their share of the usage
_SUBSCRIPTION_ROW = re.compile(r"/subscriptions/[^/]+/usages(/[^/]+)?", re.IGNORECASE)


def ensure_workspace(seam, location=None):
    """Create the resource group (when missing) and the workspace (when missing).

    Returns the lines to print.
    """
    s = seam.settings.require("subscription_id", "resource_group", "workspace_name")
    lines = []
    if not seam.resource_group_exists():
        if not location:
            raise UsageError(f"resource group {s.resource_group!r} does not exist; give "
                            "--location (or AZURE_LOCATION) to create it")
        seam.create_resource_group(location)
        lines.append(f"created resource group {s.resource_group} in {location}")
    existing = seam.get_workspace()
    if existing:
        lines.append(f"workspace {s.workspace_name} already exists ({existing['location']})")
    else:
        load_sdk()
        from azure.ai.ml.entities import Workspace

        # location None: the SDK uses the resource group's location
        seam.create_workspace(Workspace(name=s.workspace_name, location=location))
        lines.append(f"created workspace {s.workspace_name}")
    lines.append(f"studio: {studio_url(s)}")
    return lines


def compute_entity(resolved, max_nodes=1, min_nodes=0, idle_minutes=DEFAULT_IDLE_MINUTES,
                   low_priority=False):
    """The AmlCompute entity for a resolved alias, with the tier spelled the way the service wants.

    The constructor does not validate `tier` and "LowPriority" would be sent as "Lowpriority"
    (notes section 2): only "low_priority" / "dedicated" are correct.
    """
    if not 0 <= min_nodes <= max_nodes or max_nodes < 1:
        raise UsageError(f"need 0 <= --min-nodes <= --max-nodes and --max-nodes >= 1 "
                        f"(got {min_nodes} and {max_nodes})")
    if idle_minutes < 1:
        raise UsageError("--idle-minutes must be at least 1")
    load_sdk()
    from azure.ai.ml.entities import AmlCompute

    return AmlCompute(name=resolved.cluster, size=resolved.size.name, min_instances=min_nodes,
                      max_instances=max_nodes, idle_time_before_scale_down=idle_minutes * 60,
                      tier="low_priority" if low_priority else "dedicated")


def _normal(text):
    """Lower case without spaces and underscores: how a family's two spellings become equal."""
    return re.sub(r"[\s_]", "", (text or "").lower())


def family_quota_name(family, low_priority):
    """The usage row name of a VM family's cluster quota: standardNCASv3_T4Family ->
    "Standard NCASv3_T4 Family Cluster Dedicated vCPUs" (the name to request when it has no row)."""
    core = re.fullmatch(r"standard(.+?)family", family or "", re.IGNORECASE)
    tier = "LowPriority" if low_priority else "Dedicated"
    return f"Standard {core.group(1) if core else family} Family Cluster {tier} vCPUs"


@dataclass(frozen=True)
class Quota:
    """One quota a cluster draws on, in vCPUs; limit None is no limit (-1), and a quota the
    subscription lists no row for counts as limit 0 (`listed` False)."""
    name: str
    needed: int
    used: int
    limit: int | None
    listed: bool = True

    @property
    def available(self):
        return None if self.limit is None else max(self.limit - self.used, 0)

    @property
    def short(self):
        return self.limit is not None and self.needed > self.available


def _quota(usage, name, needed):
    """The Quota named `name` among the seam's usage rows: the subscription-level row of that name
    (prose compared after _normal), or limit 0 when the subscription lists none."""
    wanted = _normal(name)
    row = next((u for u in usage if _normal(u["name"]) == wanted
                and _SUBSCRIPTION_ROW.fullmatch(u["id"] or "")), None)
    if row is None:
        return Quota(name, needed, 0, 0, listed=False)
    limit = int(row["limit"])
    return Quota(row["name"], needed, int(row["current"]), None if limit < 0 else limit)


@dataclass(frozen=True)
class ComputePlan:
    """What a cluster will be, what it costs per hour and which quotas it needs; printed before
    it is created (`lines`), and refused when a quota is short (`require_quota`)."""
    cluster: str
    size: Size
    location: str
    max_nodes: int
    low_priority: bool
    vcpus: int
    prices: dict  # seam.size_row's: currency, dedicated, low_priority (Linux, per node-hour)
    quotas: tuple

    @property
    def tier(self):
        return "low-priority" if self.low_priority else "dedicated"

    def _price(self, value):
        return "no estimate" if value is None else f"{value:.2f} {self.prices['currency']}/h"

    def lines(self):
        """The plan as printed: size and GPUs, prices per node, cost at max nodes, quota table."""
        size, prices = self.size, self.prices
        gpus = (f"{size.gpus}x {size.gpu_type}, {size.gpu_memory_gib} GiB GPU memory"
                if size.gpus else "no GPU")
        hourly = prices["low_priority" if self.low_priority else "dedicated"]
        total = self._price(None if hourly is None else hourly * self.max_nodes)
        width = max(len(q.name) for q in self.quotas)
        lines = [f"plan: compute {self.cluster} in {self.location}",
                 f"  size:    {size.name}: {gpus}, {self.vcpus} vCPUs per node",
                 f"  price:   {self._price(prices['dedicated'])} dedicated, "
                 f"{self._price(prices['low_priority'])} low-priority per node (Linux, Azure's "
                 f"estimate)",
                 f"  cost:    {total} at {self.max_nodes} {self.tier} node(s), the most it scales to",
                 f"  quota (vCPUs):{'':{width - 10}}needed    used   limit"]
        for q in self.quotas:
            limit = "none" if q.limit is None else str(q.limit)
            note = "" if q.listed else "  (no quota row: none granted)"
            mark = "  SHORT" if q.short else ""
            lines.append(f"    {q.name:{width}}  {q.needed:6}  {q.used:6}  {limit:>6}{note}{mark}")
        return lines

    def require_quota(self):
        """Raise UsageError (one line) naming each short quota, what it needs and what to request."""
        short = [q for q in self.quotas if q.short]
        if not short:
            return
        fits = min(q.available // self.vcpus for q in self.quotas if q.limit is not None)
        hint = f" (or use --max-nodes {fits})" if 1 <= fits < self.max_nodes else ""
        found = " and ".join(
            f"{q.name!r} needs {q.needed} vCPUs, {q.available} available (limit {q.limit}, in use "
            f"{q.used}{'' if q.listed else ', no quota row'})" for q in short)
        request = ", ".join(f"{q.name!r} to at least {q.used + q.needed}" for q in short)
        raise UsageError(f"not enough quota in {self.location} for {self.max_nodes} x "
                        f"{self.size.name} ({self.tier}): {found}; request {request} in "
                        f"{self.location} at {QUOTA_URL}{hint}")


def plan_compute(seam, resolved, max_nodes, low_priority, location):
    """The ComputePlan of `max_nodes` nodes of `resolved` in `location`, from the service's sizes
    (vCPUs, prices, low-priority capability) and usages. Raises UsageError when the size is not
    offered there or cannot run low-priority."""
    name = resolved.size.name
    vm = next((r for r in seam.list_sizes(location) if (r["name"] or "").lower() == name.lower()),
              None)
    if vm is None:
        raise UsageError(f"{name} is not offered for Azure ML compute in {location}; "
                        "pick another region or size (`orchestrate compute sizes`)")
    if low_priority and vm["low_priority_capable"] is False:
        raise UsageError(f"{name} cannot run low-priority nodes in {location}; drop --low-priority")
    vcpus = int(vm["vcpus"] or resolved.size.vcpus)
    needed = vcpus * max_nodes
    usage = seam.list_usage(location)
    quotas = (_quota(usage, family_quota_name(vm["family"], low_priority), needed),
              _quota(usage, REGIONAL_QUOTA[low_priority], needed))
    return ComputePlan(resolved.cluster, resolved.size, location, max_nodes, low_priority, vcpus,
                       vm["prices"], quotas)


def priced_catalogue(seam):
    """(region, catalogue rows with a `prices` field) for `compute sizes`: the workspace region's
    Linux estimates per node-hour; prices None for a size the region does not offer."""
    workspace = seam.get_workspace()
    if workspace is None:
        raise UsageError(f"workspace {seam.settings.workspace_name!r} does not exist")
    location = workspace["location"]
    offered = {r["name"].lower(): r["prices"] for r in seam.list_sizes(location) if r["name"]}
    return location, [{**row, "prices": offered.get(row["name"].lower())} for row in catalogue()]


def ensure_compute(seam, resolved, *, on_event=events.ignore, max_nodes=1, min_nodes=0,
                   idle_minutes=DEFAULT_IDLE_MINUTES, low_priority=False, approve=None):
    """Create the cluster for `resolved` unless it exists, telling each step as it happens (an
    events.notice per line to `on_event`: a retired size's notice, the plan, warnings, the result).

    Before a create: the plan (ComputePlan.lines), then the quota check (UsageError before anything
    is created), then `approve("create compute NAME?")` when given (the CLI's confirmation, a notebook's question): False
    stops with a UsageError, nothing created (the CLI's confirmation raises click's Abort instead).
    An existing cluster is left as it is, but one that cannot scale to `max_nodes` is an error:
    a job asking for more nodes than its cluster allows would only fail later.
    """
    def say(line):
        on_event(events.notice(line))

    if resolved.notice:
        say(resolved.notice)
    entity = compute_entity(resolved, max_nodes, min_nodes, idle_minutes, low_priority)
    existing = seam.get_compute(resolved.cluster)
    if existing:
        if existing.get("state") == "Failed":
            errors = "; ".join(existing.get("errors") or []) or "the service gives no error details"
            raise UsageError(f"compute {resolved.cluster} is in provisioning state Failed: {errors}; "
                            f"delete it (`orchestrate compute delete --compute {resolved.cluster}`) and "
                            "create it again")
        if (existing["max_instances"] or 0) < max_nodes:
            raise UsageError(f"compute {resolved.cluster} scales to at most "
                            f"{existing['max_instances']} node(s), {max_nodes} needed; delete it "
                            "(`orchestrate compute delete`) and create it with more --max-nodes")
        say(f"compute {resolved.cluster} already exists ({existing['size']}, "
            f"{existing['min_instances']}-{existing['max_instances']} nodes)")
        if (existing["size"] or "").lower() != resolved.size.name.lower():
            say(f"warning: {resolved.cluster} is {existing['size']}, not {resolved.size.name}; "
                "delete it to change its size")
        if _tier_word(existing["tier"]) != _tier_word(entity.tier):
            say(f"warning: {resolved.cluster} has {_tier_word(existing['tier'])} nodes, "
                f"not {_tier_word(entity.tier)}; delete it to change its tier")
        return
    workspace = seam.get_workspace()
    if workspace is None:
        raise UsageError(f"workspace {seam.settings.workspace_name!r} does not exist; run "
                        "`orchestrate workspace create` first")
    # clusters live in their workspace's region
    plan = plan_compute(seam, resolved, max_nodes, low_priority, workspace["location"])
    for line in plan.lines():
        say(line)
    plan.require_quota()
    if approve and not approve(f"create compute {resolved.cluster}?"):
        raise UsageError(f"compute {resolved.cluster} not created: not approved")
    seam.create_compute(entity)
    say(f"created compute {resolved.cluster}: {resolved.size.name}, {min_nodes}-{max_nodes} nodes "
        f"({_tier_word(entity.tier)}), scales down after {idle_minutes} idle minutes")


def _tier_word(tier):
    """'low-priority' or 'dedicated', whichever spelling the service returned."""
    return "low-priority" if "low" in (tier or "").lower() else "dedicated"
