"""Azure ML compute, from Python: the GPU size catalogue and the training clusters.

What `orchestrate compute sizes|create|show|list|delete` do. A compute is named by an alias
(gpu-t4, gpu-a100, ...; `sizes()` lists them) or an Azure size name; retired sizes (the
tutorials' Standard_NC12...) resolve to their substitute, with a notice. The workspace is named
as in orchestrator.workspace (subscription_id=, resource_group=, workspace_name=, location=,
profile= keyword arguments, else the environment, the profile, config.json). Progress and
notices arrive as events.notice dicts through `on_event`.

Example:
    >>> import orchestrator
    >>> [row["alias"] for row in orchestrator.compute.sizes()][:3]
    ['cpu', 'gpu-t4', 'gpu-t4x4']
    >>> orchestrator.compute.create("gpu-t4", max_nodes=2, low_priority=True, on_event=print)
    'gpu-t4'
"""
from __future__ import annotations

import builtins

from . import events, workspace
from .errors import OrchestrateError, UsageError
from .events import Approve, OnEvent



class Sizes(builtins.list):
    """The rows of `sizes()` (a list of dicts), and `location`: the workspace region their
    `prices` are for (None: no workspace reached, the catalogue alone, without prices)."""

    location: str | None = None


def sizes(*, on_event: OnEvent | None = None, subscription_id: str | None = None, resource_group: str | None = None,
          workspace_name: str | None = None, profile: str | None = None) -> Sizes:
    """Every compute alias and size: GPUs, GPU type and memory, vCPUs, status (current or retired,
    with its `substitute`) and, when a workspace is configured and reachable, `prices` (currency,
    dedicated, low_priority per node-hour in its region; None where the region does not offer it).

    Why offline first: the catalogue is the product's own table, so it costs no network; an
    unreachable workspace only loses the prices (an events.notice says why).

    Example:
        >>> rows = orchestrator.compute.sizes()
        >>> next(r for r in rows if r["alias"] == "gpu-t4")["gpu_memory_gib"]
        16
    """
    from .backends.azure.catalogue import catalogue

    resolved = workspace.settings(subscription_id=subscription_id, resource_group=resource_group,
                                  workspace_name=workspace_name, profile=profile)
    rows = Sizes(catalogue())
    if resolved.subscription_id and resolved.resource_group and resolved.workspace_name:
        from .backends.azure.provision import priced_catalogue
        from .backends.azure.seam import azure_errors

        try:
            with azure_errors():
                location, priced = priced_catalogue(workspace.seam_for(resolved))
        except OrchestrateError as exc:
            (on_event or events.ignore)(events.notice(f"note: no prices ({exc}); showing the catalogue only"))
        else:
            rows = Sizes(priced)
            rows.location = location
    return rows


def create(compute: str, *, max_nodes: int = 1, min_nodes: int = 0, idle_minutes: int = 10,
           low_priority: bool = False, approve: Approve | None = None, on_event: OnEvent | None = None,
           subscription_id: str | None = None, resource_group: str | None = None,
           workspace_name: str | None = None, location: str | None = None, profile: str | None = None) -> str:
    """Create the cluster of `compute` unless it exists; its name.

    Why a plan first: an AmlCompute create succeeds even without quota, and fails only when a job
    waits forever for nodes. So before anything is created on_event gets the plan (size, GPUs,
    price per hour, cost at max_nodes, quotas) as notices, a short quota raises UsageError, and
    approve(question) is asked ("create compute NAME?"; False stops with a UsageError).
    min_nodes 0 scales to zero (no cost when idle); low_priority nodes are preemptible and cheaper.

    Example:
        >>> orchestrator.compute.create("gpu-t4", max_nodes=2, approve=lambda q: input(q) == "y")
        'gpu-t4'
    """
    from .backends.azure.catalogue import resolve
    from .backends.azure.provision import ensure_compute
    from .backends.azure.seam import azure_errors

    resolved = resolve(compute)
    seam = workspace.seam_for(workspace.settings(subscription_id=subscription_id, resource_group=resource_group,
                                                 workspace_name=workspace_name, location=location, profile=profile))
    with azure_errors():
        ensure_compute(seam, resolved, max_nodes=max_nodes, min_nodes=min_nodes, idle_minutes=idle_minutes,
                       low_priority=low_priority, on_event=on_event or events.ignore,
                       approve=approve)
    return resolved.cluster


def show(compute: str, *, on_event: OnEvent | None = None, subscription_id: str | None = None,
         resource_group: str | None = None, workspace_name: str | None = None, location: str | None = None,
         profile: str | None = None) -> dict:
    """The cluster of `compute`: size, node range, tier, state; UsageError when it does not exist.

    Example:
        >>> orchestrator.compute.show("gpu-t4")["max_instances"]
        2
    """
    from .backends.azure.seam import azure_errors

    resolved = _resolve(compute, on_event)
    seam = workspace.seam_for(workspace.settings(subscription_id=subscription_id, resource_group=resource_group,
                                                 workspace_name=workspace_name, location=location, profile=profile))
    with azure_errors():
        found = seam.get_compute(resolved.cluster)
    if found is None:
        raise UsageError(f"compute {resolved.cluster!r} does not exist; create it with "
                         f"`orchestrate compute create --compute {resolved.cluster}`")
    return found


class Clusters(builtins.list):
    """The rows of `list()` (a list of dicts), and `workspace_name`: the workspace they are in."""

    workspace_name: str | None = None


def list(*, subscription_id: str | None = None, resource_group: str | None = None,  # noqa: A001
         workspace_name: str | None = None, location: str | None = None,
         profile: str | None = None) -> Clusters:
    """Every AmlCompute cluster of the workspace: size, tier, node range, and the nodes it holds
    now (current, idle, busy) -- a node that is up bills, busy or idle.

    Example:
        >>> sum(c["current_nodes"] for c in orchestrator.compute.list())
        0
    """
    from .backends.azure.seam import azure_errors

    resolved = workspace.settings(subscription_id=subscription_id, resource_group=resource_group,
                                  workspace_name=workspace_name, location=location, profile=profile)
    seam = workspace.seam_for(resolved)
    with azure_errors():
        clusters = Clusters(seam.list_clusters())
    clusters.workspace_name = resolved.workspace_name
    return clusters


def delete(compute: str, *, approve: Approve | None = None, on_event: OnEvent | None = None,
           subscription_id: str | None = None, resource_group: str | None = None,
           workspace_name: str | None = None, location: str | None = None, profile: str | None = None) -> dict:
    """Delete the cluster of `compute` (jobs running on it fail); {"compute": name, "deleted":
    False when there was none}. approve(question) is asked first ("delete compute NAME?"; False
    stops with a UsageError).

    Example:
        >>> orchestrator.compute.delete("gpu-t4")
        {'compute': 'gpu-t4', 'deleted': True}
    """
    from .backends.azure.seam import azure_errors

    resolved = _resolve(compute, on_event)
    seam = workspace.seam_for(workspace.settings(subscription_id=subscription_id, resource_group=resource_group,
                                                 workspace_name=workspace_name, location=location, profile=profile))
    if approve and not approve(f"delete compute {resolved.cluster}?"):
        raise UsageError(f"compute {resolved.cluster} not deleted: not approved")
    with azure_errors():
        if seam.get_compute(resolved.cluster) is None:
            return {"compute": resolved.cluster, "deleted": False}
        seam.delete_compute(resolved.cluster)
    return {"compute": resolved.cluster, "deleted": True}


def _resolve(compute, on_event):
    """catalogue.resolve, its retirement notice (if any) to on_event."""
    from .backends.azure.catalogue import resolve

    resolved = resolve(compute)
    if resolved.notice:
        (on_event or events.ignore)(events.notice(resolved.notice))
    return resolved
