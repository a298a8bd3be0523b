"""The SDK's own events on the terminal: what the client does before and around a job.

Scanning, hashing, packing and uploading a dataset, downloading weights (transfer events), what
it tells the user (notices: Azure ML job links, compute plans, warnings) and an image build's
output (build events). The SDK reports them as event dicts (orchestrator.events); this draws
them on stderr (stdout carries results): bars on a terminal, a plain line at most every 10 s
elsewhere (render.progress_bars); a notice is one line.
"""
import threading

import click
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from ..printable import printable
from .render import console_for, progress_bars

KIB = 1024


class ClientEvents:
    """An `on_event` callable drawing one bar per (what, unit) of the transfer events it gets
    (bytes as KiB, on a bar without a title under its files' or shards' bar), printing each
    notice on stderr, and showing build output as cli.image.build_progress does."""

    def __init__(self):
        self.progress = progress_bars(console_for(stderr=True), TextColumn("{task.description:<9}"), BarColumn(),
                                      MofNCompleteColumn(), TextColumn("{task.fields[unit]}"), TimeElapsedColumn())
        self.tasks = {}
        self.done = {}
        self._lock = threading.Lock()
        self._build = None  # the open build_progress context and its on_line, while a build runs

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._end_build()
        self.progress.stop()

    def __call__(self, event):
        if event["type"] == "build":
            if self._build is None:
                from .image import build_progress

                context = build_progress()
                self._build = (context, context.__enter__())
            self._build[1](event["line"])
            return
        self._end_build()
        if event["type"] == "notice":
            click.echo(printable(event["message"]), err=True)
        elif event["type"] == "transfer":
            with self._lock:
                self._draw(event)

    def _draw(self, event):
        key = (event["what"], event["unit"])
        self.done[key] = event["done"]
        scale, unit = (KIB, "KiB") if event["unit"] == "bytes" else (1, event["unit"])
        total = None if event["total"] is None else event["total"] / scale
        if key not in self.tasks:
            titled = event["unit"] != "bytes" or not any(what == event["what"] for what, _ in self.tasks)
            description = event["what"] if titled else ""
            self.tasks[key] = self.progress.add_task(description, total=total, unit=unit)
        self.progress.update(self.tasks[key], completed=event["done"] / scale, total=total)

    def _end_build(self):
        if self._build is not None:
            self._build[0].__exit__(None, None, None)
            self._build = None

    def sent(self, unit):
        """How many `unit`s ("files", "shards") the upload has confirmed sent so far."""
        return self.done.get(("uploading", unit), 0)
