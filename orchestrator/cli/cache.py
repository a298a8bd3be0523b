"""`orchestrate cache list|clear`: the decoded-image cache that local and Docker runs share.

The layout, the locks and the eviction order are remote_scripts/cache_store.py's, the module the
training job itself uses, so what is listed here is exactly what a job would reuse or evict.
"""
import json
import time

import click

from ..errors import UsageError

CACHE_DIR_HELP = ("The cache folder (the job's --cache-dir); default: $XDG_CACHE_HOME/orchestrate/images, "
                  "i.e. ~/.cache/orchestrate/images.")


def _root(cache_dir):
    from remote_scripts import cache_store

    return cache_dir or cache_store.default_root()


def _size(nbytes):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


@click.group()
def cache():
    """The decoded-image cache: images decoded once at a training size, reused by every run on
    the same files at that size (resumed and repeated runs skip the decoding).

    Entries held by a running job are never removed; the least recently used ones are evicted
    when the cache grows past the job's --cache-size-gb.

    \b
    Examples:
      orchestrate cache list
      orchestrate cache clear 3f9a0c1d
      orchestrate cache clear --all
    """


@cache.command("list")
@click.option("--cache-dir", type=click.Path(file_okay=False), help=CACHE_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as a JSON list.")
def list_entries(cache_dir, as_json):
    """List the cache's entries, least recently used (the next evicted) first."""
    from remote_scripts import cache_store

    root = _root(cache_dir)
    entries = cache_store.list_entries(root)
    if as_json:
        click.echo(json.dumps([entry.to_json() for entry in entries], indent=2))
        return
    if not entries:
        click.echo(f"the image cache {root} is empty")
        return
    from .render import console_for
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", caption=f"{root}, {_size(sum(e.bytes for e in entries))}")
    for column in ("key", "images", "image size", "on disk", "last used", "in use", "data"):
        table.add_column(column, no_wrap=column == "key", justify="right" if column in ("images", "on disk") else "left")
    for entry in entries:
        row = entry.to_json()
        images = str(row["images"]) if entry.complete else "incomplete"
        image_size = f"{row['image_size']} px" if entry.complete else "-"
        table.add_row(entry.key, images, image_size, _size(entry.bytes),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used)),
                      "yes" if entry.in_use else "no", row["data"] or "-")
    console_for().print(table)


@cache.command("clear")
@click.argument("keys", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Remove every entry no running job holds.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help=CACHE_DIR_HELP)
def clear_entries(keys, everything, cache_dir):
    """Remove the entries named by KEY (a unique prefix is enough), or all of them with --all.

    An entry a running job holds is kept and named; the others go at once.
    """
    from remote_scripts import cache_store

    if bool(keys) == everything:
        raise UsageError("name the entries to remove (see `orchestrate cache list`) or pass --all, not both")
    root = _root(cache_dir)
    if everything:
        removed, busy = cache_store.clear(root)
    else:
        try:
            full_keys = cache_store.resolve_keys(root, keys)
        except ValueError as exc:
            raise UsageError(f"{exc} in {root} (see `orchestrate cache list`)") from None
        removed, busy = cache_store.clear(root, full_keys)
    click.echo(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} from {root}")
    for key in busy:
        click.echo(f"kept {key}: a running job is using it")
