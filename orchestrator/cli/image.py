"""`orchestrate image`: build the training image ahead of time, or an offline base image.

Both are also done on demand by `orchestrate train --backend docker`; these commands exist for
air-gapped hosts (build the base once) and for CI (build before the timed part of a pipeline).
"""
from contextlib import contextmanager

import click

from ..images import DEBOOTSTRAP_PHASE, DEFAULT_BASE_IMAGE, OFFLINE_BASE_TAG


@contextmanager
def build_progress():
    """An `on_line` callback for orchestrator.images that shows build/pull/debootstrap output as
    progress on stderr.

    Milestones (build steps, debootstrap phases, warnings) stay on screen; debootstrap's
    hundreds of per-package "I: Unpacking libfoo..." lines only flash by in a status line.
    """
    from rich.markup import escape

    from .render import console_for

    console = console_for(stderr=True)
    with console.status("starting") as status:
        def on_line(line):
            if not line.startswith("I: ") or DEBOOTSTRAP_PHASE.search(line):
                console.print(escape(line), highlight=False)
            status.update(escape(line[:100]))

        yield on_line


@click.group()
def image():
    """Build the docker backend's images.

    \b
    Example:
      sudo orchestrate image build-base --offline
      orchestrate image build --base-image orchestrate/base:offline
    """


@image.command("build-base")
@click.option("--offline", is_flag=True, help="Build from a Debian mirror with debootstrap (no registry needed).")
@click.option("--tag", default=OFFLINE_BASE_TAG, show_default=True, help="Tag of the base image.")
@click.option("--mirror", metavar="URL",
              help="Debian archive to bootstrap from (default: the one this host's apt sources use).")
@click.option("--force", is_flag=True, help="Rebuild even if the tag exists.")
def build_base(offline, tag, mirror, force):
    """Build a base image with Python 3 and Debian's torch, without any container registry.

    Needs root and debootstrap; takes a few minutes. The Debian mirror is the one this host's apt
    already uses (/etc/apt/sources.list and sources.list.d/), unless --mirror names another.

    \b
    Example:
      sudo orchestrate image build-base --offline --tag orchestrate/base:offline
    """
    from ..backends.docker import connect
    from ..errors import UsageError
    from ..images import build_offline_base, image_exists

    if not offline:
        raise UsageError("only --offline is supported: a registry base is pulled by `orchestrate image build`")
    client = connect()
    if image_exists(client, tag) and not force:
        click.echo(f"{tag} already exists (use --force to rebuild)")
        return
    with build_progress() as on_line:
        build_offline_base(client, tag=tag, mirror=mirror, on_line=on_line)
    click.echo(tag)


@image.command("build")
@click.option("--base-image", default=DEFAULT_BASE_IMAGE, show_default=True, help="Base image (FROM).")
def build(base_image):
    """Build the training image from infra/docker/ and print its tag (a no-op when it exists).

    \b
    Example:
      orchestrate image build --base-image orchestrate/base:offline
    """
    from ..backends.docker import connect
    from ..images import ensure_training_image

    with build_progress() as on_line:
        tag = ensure_training_image(connect(), base_image, on_line)
    click.echo(tag)
