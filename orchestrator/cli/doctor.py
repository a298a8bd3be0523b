"""`orchestrate doctor`: what the docker backend needs on this host, and what is missing.

Why a command of its own: "docker doesn't work" has four different causes (no engine, no
permission on its socket, no image and no registry to pull one, no GPU runtime), each with a
different fix. The same explanations are what `--backend docker` raises from prepare().
"""
import json
import os
import shutil

import click

from ..images import DEFAULT_BASE_IMAGE, OFFLINE_BASE_TAG

OK, WARN, FAIL = "ok", "warn", "fail"
MARKS = {OK: "[green]✓[/green]", WARN: "[yellow]![/yellow]", FAIL: "[red]✗[/red]"}


def run_checks(base_image):
    """(check, result, detail) rows; stops after the engine check when there is no engine."""
    from ..backends.docker import connect, gpu_runtime
    from ..errors import OrchestrateError
    from ..images import host_debian_mirror, image_exists, image_tag

    try:
        client = connect(timeout=5)
    except OrchestrateError as exc:
        return [("engine", FAIL, str(exc))]
    version = client.version()
    rows = [("engine", OK, f"Docker {version.get('Version')} (API {version.get('ApiVersion')})")]

    tag = image_tag(base_image)
    if image_exists(client, tag):
        rows.append(("training image", OK, f"{tag} (base {base_image})"))
    elif image_exists(client, base_image):
        rows.append(("training image", WARN, f"{tag} not built yet; the first docker run builds it "
                                              f"from {base_image} (or: orchestrate image build)"))
    elif image_exists(client, OFFLINE_BASE_TAG):
        rows.append(("training image", WARN, f"base {base_image} is not here and may not be pullable; "
                                              f"the offline base exists: use --base-image {OFFLINE_BASE_TAG}"))
    else:
        rows.append(("training image", WARN, f"base {base_image} is not here: it is pulled on the first "
                                              "docker run; without registry access build one with "
                                              "`sudo orchestrate image build-base --offline`"))

    if gpu_runtime(client):
        rows.append(("gpu runtime", OK, "NVIDIA runtime present: GPUs are passed through"))
    else:
        rows.append(("gpu runtime", WARN, "no GPU runtime (NVIDIA Container Toolkit): containers train "
                                          "on the CPU"))

    can_build = shutil.which("debootstrap") and os.geteuid() == 0
    mirror = host_debian_mirror()
    if not can_build:
        rows.append(("offline builder", WARN, "image build-base --offline needs debootstrap "
                                              "(apt-get install debootstrap) and root"))
    elif mirror is None:
        rows.append(("offline builder", WARN, "debootstrap and root available; no Debian archive in "
                                              "this host's apt sources: build-base needs --mirror URL"))
    else:
        rows.append(("offline builder", OK, f"debootstrap and root available; Debian archive {mirror} "
                                            "(from this host's apt sources)"))
    return rows


@click.command()
@click.option("--base-image", default=DEFAULT_BASE_IMAGE, show_default=True, help="Base image to check for.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(base_image, as_json):
    """Check what the docker backend needs here: engine, socket permission, image, GPU runtime.

    Exits 2 when the docker backend cannot run at all.

    \b
    Example:
      orchestrate doctor --base-image orchestrate/base:offline
    """
    rows = run_checks(base_image)
    if as_json:
        click.echo(json.dumps([{"check": c, "result": r, "detail": d} for c, r, d in rows], indent=2))
    else:
        from .render import console_for
        from rich.table import Table

        table = Table(show_header=False, box=None)
        for check, result, detail in rows:
            table.add_row(MARKS[result], check, detail)
        console_for().print(table)
    if any(result == FAIL for _, result, _ in rows):
        raise SystemExit(2)
