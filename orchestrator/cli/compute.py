"""`orchestrate compute sizes|create|show|list|delete`: a shell over orchestrator.compute.

`sizes` needs no Azure when no workspace is configured; with one, it adds the region's prices.
Each command parses, makes one call to orchestrator.compute, and prints what it returns.
"""
import sys

import click

from .azure_options import workspace_options

COMPUTE_HELP = "Alias (gpu-t4, gpu-a100, ...) or Azure size name; see `orchestrate compute sizes`."


def _err_notice(event):
    """on_event of the commands that print results: notices (a retired size's) on stderr."""
    click.echo(event["message"], err=True)


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
    from .. import compute as sdk
    from .common import print_json

    rows = sdk.sizes(on_event=_err_notice, profile=profile, **flags)
    location = rows.location
    if as_json:
        print_json(rows)
        return
    from .render import console_for
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


def _money(value):
    return "-" if value is None else f"{value:.2f}"


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
@workspace_options()
def create(compute_name, max_nodes, min_nodes, idle_minutes, low_priority, yes, **workspace):
    """Create the cluster unless it exists: first a plan (size, GPUs, price per hour, cost at
    max nodes, quota), then a confirmation on a terminal; short quota stops before anything is
    created.

    \b
    Example:
      orchestrate compute create --compute gpu-t4 --max-nodes 2 --low-priority --yes
    """
    from .. import compute as sdk

    def approve(question):
        return click.confirm(question, abort=True)
    ask = not yes and sys.stdin.isatty()  # a script or a pipe has nobody to answer
    # the plan and the outcome are the result (stdout); a retired size's notice goes to stderr
    sdk.create(compute_name, max_nodes=max_nodes, min_nodes=min_nodes, idle_minutes=idle_minutes,
               low_priority=low_priority, approve=approve if ask else None,
               on_event=lambda event: click.echo(event["message"], err=event["message"].startswith("notice: ")),
               **workspace)


@compute.command()
@click.option("--compute", "compute_name", required=True, help=COMPUTE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@workspace_options()
def show(compute_name, as_json, **workspace):
    """Show the cluster: size, node range, tier, state."""
    from .. import compute as sdk
    from .common import print_json

    found = sdk.show(compute_name, on_event=_err_notice, **workspace)
    if as_json:
        print_json(found)
        return
    for key, value in found.items():
        click.echo(f"{key:14} {value}")


@compute.command()
@click.option("--compute", "compute_name", required=True, help=COMPUTE_HELP)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@workspace_options()
def delete(compute_name, yes, **workspace):
    """Delete the cluster (running jobs on it fail)."""
    from .. import compute as sdk

    result = sdk.delete(compute_name, on_event=_err_notice,
                        approve=None if yes else (lambda question: click.confirm(question, abort=True)), **workspace)
    if not result["deleted"]:
        click.echo(f"compute {result['compute']} does not exist")
        return
    click.echo(f"deleted compute {result['compute']}")


@compute.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@workspace_options()
def list_clusters(as_json, **workspace):
    """List every AmlCompute cluster of the workspace with its size, tier, node range and the
    nodes it holds now (current, idle, busy): a node that is up bills, busy or idle.

    \b
    Example:
      orchestrate compute list --json
    """
    from .. import compute as sdk
    from .common import print_json

    rows = sdk.list(**workspace)
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo(f"no AmlCompute clusters in workspace {rows.workspace_name}")
        return
    from .render import console_for
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
