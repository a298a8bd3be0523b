"""`orchestrate compute sizes|create|show|delete`: the NC-series catalogue and the GPU cluster.

`sizes` needs no Azure when no workspace is configured (backends.azure.catalogue); with one, it
adds the region's prices. The others go through the seam.
"""
import sys

import click

from ..errors import UserError
from .azure_options import with_settings, workspace_flags, workspace_options
from .workspace import make_seam

COMPUTE_HELP = "Alias (gpu-t4, gpu-a100, ...) or Azure size name; see `orchestrate compute sizes`."


@click.group()
def compute():
    """The GPU cluster that runs the training jobs (scales to zero when idle).

    \b
    Example:
      orchestrate compute sizes
      orchestrate compute create --compute gpu-t4 --max-nodes 2 --low-priority
    """


@compute.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@workspace_options(location=False)
def sizes(as_json, profile, **flags):
    """List the compute aliases and sizes: GPUs, GPU memory, vCPUs, status, and -- when a
    workspace is configured and reachable -- the hourly prices in its region.

    \b
    Example:
      orchestrate compute sizes --json
    """
    from ..backends.azure.catalogue import catalogue
    from ..backends.azure.settings import load_settings
    from .common import print_json

    settings = load_settings(workspace_flags(flags), profile=profile)
    location, rows = None, catalogue()
    if settings.subscription_id and settings.resource_group and settings.workspace_name:
        location, rows = _priced(settings) or (location, rows)
    if as_json:
        print_json(rows)
        return
    from ..render import console_for
    from rich.table import Table

    columns = ["alias", "Azure size", "GPUs", "GPU", "GPU mem (GiB)", "vCPUs", "status"]
    currency = next((r["prices"]["currency"] for r in rows if r.get("prices")), None)
    if location:
        columns += [f"{currency}/h dedicated", f"{currency}/h low-pri"]
    table = Table(*columns, box=None, pad_edge=False)
    for r in rows:
        status = r["status"] + (f" -> {r['substitute']}" if r.get("substitute") else "")
        cells = [r["alias"], r["name"], str(r["gpus"]), r["gpu_type"], str(r["gpu_memory_gib"]),
                 str(r["vcpus"]), status]
        if location:
            prices = r["prices"] or {}
            cells += [_money(prices.get("dedicated")), _money(prices.get("low_priority"))]
        table.add_row(*cells)
    console_for().print(table)
    if location:
        click.echo(f"prices: {location}, Linux, per node-hour, Azure's estimate "
                   "(- = not offered there or no estimate)")


def _priced(settings):
    """(region, rows with prices) for the configured workspace, or None (with a note on stderr)
    when it cannot be reached: the catalogue alone is still worth showing."""
    from ..backends.azure.provision import priced_catalogue
    from ..backends.azure.seam import azure_errors

    try:
        with azure_errors():
            return priced_catalogue(make_seam(settings))
    except UserError as exc:
        click.echo(f"note: no prices ({exc}); showing the catalogue only", err=True)
        return None


def _money(value):
    return "-" if value is None else f"{value:.2f}"


def _resolve(value):
    from ..backends.azure.catalogue import resolve

    resolved = resolve(value)
    if resolved.notice:
        click.echo(resolved.notice, err=True)
    return resolved


@compute.command()
@click.option("--compute", "compute_name", required=True, help=COMPUTE_HELP)
@click.option("--max-nodes", type=int, default=1, show_default=True, help="Most nodes to scale to.")
@click.option("--min-nodes", type=int, default=0, show_default=True,
              help="Nodes kept running (0 = scale to zero, no cost when idle).")
@click.option("--idle-minutes", type=int, default=10, show_default=True,
              help="Idle minutes before a node is released.")
@click.option("--low-priority", is_flag=True,
              help="Low-priority (preemptible, much cheaper) nodes; runs resume from checkpoints.")
@click.option("--yes", is_flag=True, help="Create without asking (asked only on a terminal).")
@with_settings
def create(settings, compute_name, max_nodes, min_nodes, idle_minutes, low_priority, yes):
    """Create the cluster unless it exists: first a plan (size, GPUs, price per hour, cost at
    max nodes, quota), then a confirmation on a terminal; short quota stops before anything is
    created.

    \b
    Example:
      orchestrate compute create --compute gpu-t4 --max-nodes 2 --low-priority --yes
    """
    from ..backends.azure.catalogue import resolve
    from ..backends.azure.provision import ensure_compute
    from ..backends.azure.seam import azure_errors

    resolved = resolve(compute_name)
    seam = make_seam(settings)

    def approve():
        click.confirm(f"create compute {resolved.cluster}?", abort=True)
    ask = not yes and sys.stdin.isatty()  # a script or a pipe has nobody to answer
    with azure_errors():
        ensure_compute(seam, resolved, max_nodes=max_nodes, min_nodes=min_nodes,
                       idle_minutes=idle_minutes, low_priority=low_priority,
                       approve=approve if ask else None,
                       say=lambda line: click.echo(line, err=line == resolved.notice))


@compute.command()
@click.option("--compute", "compute_name", required=True, help=COMPUTE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings
def show(settings, compute_name, as_json):
    """Show the cluster: size, node range, tier, state."""
    from ..backends.azure.seam import azure_errors
    from .common import print_json

    resolved = _resolve(compute_name)
    seam = make_seam(settings)
    with azure_errors():
        found = seam.get_compute(resolved.cluster)
    if found is None:
        raise UserError(f"compute {resolved.cluster!r} does not exist; create it with "
                        f"`orchestrate compute create --compute {resolved.cluster}`")
    if as_json:
        print_json(found)
        return
    for key, value in found.items():
        click.echo(f"{key:14} {value}")


@compute.command()
@click.option("--compute", "compute_name", required=True, help=COMPUTE_HELP)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_settings
def delete(settings, compute_name, yes):
    """Delete the cluster (running jobs on it fail)."""
    from ..backends.azure.seam import azure_errors

    resolved = _resolve(compute_name)
    seam = make_seam(settings)
    if not yes:
        click.confirm(f"delete compute {resolved.cluster}?", abort=True)
    with azure_errors():
        if seam.get_compute(resolved.cluster) is None:
            click.echo(f"compute {resolved.cluster} does not exist")
            return
        seam.delete_compute(resolved.cluster)
    click.echo(f"deleted compute {resolved.cluster}")


@compute.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings
def list_clusters(settings, as_json):
    """List every AmlCompute cluster of the workspace with its size, tier, node range and the
    nodes it holds now (current, idle, busy): a node that is up bills, busy or idle.

    \b
    Example:
      orchestrate compute list --json
    """
    from ..backends.azure.seam import azure_errors
    from .common import print_json

    seam = make_seam(settings)
    with azure_errors():
        rows = seam.list_clusters()
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo(f"no AmlCompute clusters in workspace {settings.workspace_name}")
        return
    from ..render import console_for
    from rich.table import Table

    table = Table("cluster", "size", "tier", "nodes min-max", "current", "idle", "busy", "allocation", "state",
                  box=None, pad_edge=False)
    for r in rows:
        table.add_row(r["name"], str(r["size"]), str(r["tier"]), f"{r['min_nodes']}-{r['max_nodes']}",
                      str(r["current_nodes"]), str(r["idle_nodes"]), str(r["busy_nodes"]),
                      str(r["allocation"] or "-"), str(r["state"]))
    console_for().print(table)
    up = sum(r["current_nodes"] for r in rows)
    click.echo(f"{up} node(s) up (billing, idle or busy)" if up else "no node up: nothing bills")
