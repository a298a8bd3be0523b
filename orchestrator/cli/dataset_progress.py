"""Progress bars for packing and uploading a packed dataset (`data pack`, `data upload`, and
`train --backend azure`'s upload): scan, hash, pack, upload.

They go to stderr (stdout carries results): bars on a terminal, a plain line at most every 10 s
elsewhere (render.progress_bars); the libraries they follow (dataset/pack.py,
storage/packed_blob.py) report through plain callbacks.
"""
import threading

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from ..render import console_for, progress_bars

PHASES = {"scan": "scanning", "hash": "hashing", "pack": "packing"}


class PackProgress:
    """Progress on stderr: one bar per phase, then shards and bytes sent."""

    def __init__(self):
        self.progress = progress_bars(console_for(stderr=True), TextColumn("{task.description:<9}"), BarColumn(),
                                      MofNCompleteColumn(), TextColumn("{task.fields[unit]}"), TimeElapsedColumn())
        self.tasks = {}
        self.shards_task = self.bytes_task = None
        self.shards_sent = 0
        self._lock = threading.Lock()  # bytes arrive from the upload threads

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.progress.stop()

    def phase(self, name, done, total):
        """pack_dataset's progress callback."""
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(PHASES[name], total=total, unit="files")
        self.progress.update(self.tasks[name], completed=done, total=total)

    def start_upload(self, shards, nbytes):
        self.shards_task = self.progress.add_task("uploading", total=shards, unit="shards")
        self.bytes_task = self.progress.add_task("", total=max(1, nbytes // 1024), unit="KiB")

    def shard(self, shard, sent):
        self.shards_sent += sent
        self.progress.advance(self.shards_task)
        if not sent:
            self.sent_bytes(shard["size"])

    def sent_bytes(self, nbytes):
        with self._lock:
            self.progress.advance(self.bytes_task, nbytes / 1024)

    def hooks(self):
        """The callbacks of storage.packed_blob.pack_and_upload that draw these bars."""
        return {"progress": self.phase, "on_upload_start": self.start_upload, "on_shard": self.shard,
                "on_bytes": self.sent_bytes}
