"""Workspace and compute provisioning: idempotent, quota-checked, scale-to-zero by default.

Why check quota first: an AmlCompute create succeeds even with zero quota for its VM family, and
the failure only shows when a job waits forever for nodes. Comparing the family's regional vCPU
quota with `vCPUs x max nodes` up front turns that into one clear line (family, needed, available).
"""
from ..config import studio_url
from ..errors import UserError
from . import load_sdk

QUOTA_URL = "https://portal.azure.com/#view/Microsoft_Azure_Capacity/QuotaMenuBlade/~/myQuotas"
DEFAULT_IDLE_MINUTES = 10


def ensure_workspace(seam, location=None):
    """Create the resource group (when missing) and the workspace (when missing).

    Returns the lines to print.
    """
    s = seam.settings.require("subscription_id", "resource_group", "workspace_name")
    lines = []
    if not seam.resource_group_exists():
        if not location:
            raise UserError(f"resource group {s.resource_group!r} does not exist; give "
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
        raise UserError(f"need 0 <= --min-nodes <= --max-nodes and --max-nodes >= 1 "
                        f"(got {min_nodes} and {max_nodes})")
    if idle_minutes < 1:
        raise UserError("--idle-minutes must be at least 1")
    load_sdk()
    from azure.ai.ml.entities import AmlCompute

    return AmlCompute(name=resolved.cluster, size=resolved.size.name, min_instances=min_nodes,
                      max_instances=max_nodes, idle_time_before_scale_down=idle_minutes * 60,
                      tier="low_priority" if low_priority else "dedicated")


def check_quota(sizes, usage, size_name, nodes, low_priority, location):
    """Raise UserError when the region's quota cannot hold `nodes` nodes of `size_name`.

    `sizes`/`usage` are the seam's list_sizes/list_usage rows. Returns a line to print when the
    quota could not be read, else "".
    """
    size = next((r for r in sizes if (r["name"] or "").lower() == size_name.lower()), None)
    if size is None:
        raise UserError(f"{size_name} is not offered for Azure ML compute in {location}; "
                        "pick another region or size (`orchestrate compute sizes`)")
    vcpus = int(size["vcpus"] or 0)
    if low_priority:
        family = next((u["name"] for u in usage if "lowpriority" in (u["name"] or "").lower()), None)
        label = "low-priority vCPUs"
    else:
        family = size["family"]
        label = f"family {family}"
    row = next((u for u in usage if family and (u["name"] or "").lower() == family.lower()), None)
    if row is None:
        return f"note: no quota entry for {label} in {location}; quota not checked"
    needed = vcpus * nodes
    available = int(row["limit"]) - int(row["current"])
    if needed > available:
        fits = available // vcpus if vcpus else 0
        hint = f"use --max-nodes {fits} or " if fits >= 1 else ""
        raise UserError(f"not enough quota in {location} for {nodes} x {size_name}: {label} needs "
                        f"{needed} vCPUs ({nodes} x {vcpus}), {max(available, 0)} available "
                        f"(limit {row['limit']}, in use {row['current']}); {hint}request more "
                        f"at {QUOTA_URL}")
    return ""


def ensure_compute(seam, resolved, max_nodes=1, min_nodes=0, idle_minutes=DEFAULT_IDLE_MINUTES,
                   low_priority=False):
    """Create the cluster for `resolved` unless it exists; quota-checked. Returns lines to print.

    An existing cluster is left as it is, but one that cannot scale to `max_nodes` is an error:
    a job asking for more nodes than its cluster allows would only fail later.
    """
    lines = [resolved.notice] if resolved.notice else []
    entity = compute_entity(resolved, max_nodes, min_nodes, idle_minutes, low_priority)
    existing = seam.get_compute(resolved.cluster)
    if existing:
        if (existing["max_instances"] or 0) < max_nodes:
            raise UserError(f"compute {resolved.cluster} scales to at most "
                            f"{existing['max_instances']} node(s), {max_nodes} needed; delete it "
                            "(`orchestrate compute delete`) and create it with more --max-nodes")
        lines.append(f"compute {resolved.cluster} already exists ({existing['size']}, "
                     f"{existing['min_instances']}-{existing['max_instances']} nodes)")
        if (existing["size"] or "").lower() != resolved.size.name.lower():
            lines.append(f"warning: {resolved.cluster} is {existing['size']}, not "
                         f"{resolved.size.name}; delete it to change its size")
        if _tier_word(existing["tier"]) != _tier_word(entity.tier):
            lines.append(f"warning: {resolved.cluster} has {_tier_word(existing['tier'])} nodes, "
                         f"not {_tier_word(entity.tier)}; delete it to change its tier")
        return lines
    workspace = seam.get_workspace()
    if workspace is None:
        raise UserError(f"workspace {seam.settings.workspace_name!r} does not exist; run "
                        "`orchestrate workspace create` first")
    where = workspace["location"]  # clusters live in their workspace's region
    note = check_quota(seam.list_sizes(where), seam.list_usage(where), resolved.size.name,
                       max_nodes, low_priority, where)
    if note:
        lines.append(note)
    seam.create_compute(entity)
    lines.append(f"created compute {resolved.cluster}: {resolved.size.name}, {min_nodes}-"
                 f"{max_nodes} nodes ({_tier_word(entity.tier)}), scales down after "
                 f"{idle_minutes} idle minutes")
    return lines


def _tier_word(tier):
    """'low-priority' or 'dedicated', whichever spelling the service returned."""
    return "low-priority" if "low" in (tier or "").lower() else "dedicated"
