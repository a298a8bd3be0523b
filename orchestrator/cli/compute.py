"""`orchestrate compute sizes|create|show|delete`: the NC-series catalogue and the GPU cluster.

`sizes` needs no Azure at all (orchestrator.compute); the others go through the seam.
"""
import click

from ..errors import UserError
from .azure_options import with_settings
from .workspace import make_seam

COMPUTE_HELP = "Alias (gpu-t4, gpu-a100, ...) or Azure size name; see `orchestrate compute sizes`."


@click.group()
def compute():
    """The GPU cluster that runs the training jobs (scales to zero when idle).

    \b
    Example:
      orchestrate compute sizes
      orchestrate compute create --compute gpu-a100 --max-nodes 2 --low-priority
    """


@compute.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sizes(as_json):
    """List the compute aliases and sizes: GPUs, GPU memory, vCPUs, status."""
    from ..compute import catalogue
    from .common import print_json

    rows = catalogue()
    if as_json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("alias", "Azure size", "GPUs", "GPU", "GPU mem (GiB)", "vCPUs", "status",
                  box=None, pad_edge=False)
    for r in rows:
        status = r["status"] + (f" -> {r['substitute']}" if r.get("substitute") else "")
        table.add_row(r["alias"], r["name"], str(r["gpus"]), r["gpu_type"],
                      str(r["gpu_memory_gib"]), str(r["vcpus"]), status)
    Console(width=140).print(table)


def _resolve(value):
    from ..compute import resolve

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
@with_settings
def create(settings, compute_name, max_nodes, min_nodes, idle_minutes, low_priority):
    """Create the cluster unless it exists, after checking the region's vCPU quota."""
    from ..azure.provision import ensure_compute
    from ..azure.seam import azure_errors

    resolved = _resolve(compute_name)
    seam = make_seam(settings)
    with azure_errors():
        lines = ensure_compute(seam, resolved, max_nodes, min_nodes, idle_minutes, low_priority)
    click.echo("\n".join(line for line in lines if line != resolved.notice))


@compute.command()
@click.option("--compute", "compute_name", required=True, help=COMPUTE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings
def show(settings, compute_name, as_json):
    """Show the cluster: size, node range, tier, state."""
    from ..azure.seam import azure_errors
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
    from ..azure.seam import azure_errors

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
