"""Progress bars for a dataset upload, shared by `orchestrate data upload` and the Azure backend.

They go to stderr (stdout carries results): hashing first, then files and bytes sent; bars on a
terminal, a plain line at most every 10 s elsewhere (render.progress_bars).
"""
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from ..render import console_for, progress_bars


class UploadProgress:
    """Progress on stderr (stdout carries the result): hashing, then files and bytes sent."""

    def __init__(self):
        self.progress = progress_bars(console_for(stderr=True), TextColumn("{task.description:<9}"), BarColumn(),
                                      MofNCompleteColumn(), TextColumn("{task.fields[unit]}"), TimeElapsedColumn())
        self.hash_task = self.progress.add_task("hashing", total=None, unit="files")
        self.files_task = self.bytes_task = None
        self.sent = 0

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.progress.stop()

    def hashed(self, entry):
        self.progress.advance(self.hash_task)

    def start_upload(self, files, nbytes):
        self.progress.update(self.hash_task, total=files, completed=files)
        self.files_task = self.progress.add_task("uploading", total=files, unit="files")
        self.bytes_task = self.progress.add_task("", total=max(1, nbytes // 1024), unit="KiB")

    def uploaded(self, entry, sent):
        self.sent += sent
        self.progress.advance(self.files_task)
        self.progress.advance(self.bytes_task, entry.size / 1024)

    def upload(self, data_dir, prefix, open_container, name=None, labels="folder", say=None):
        """Hash `data_dir` (labels: the job's --labels), then send what the container lacks;
        returns storage.blob's UploadResult.

        `open_container` is called after hashing, so a bad folder is reported before any login;
        say(line) receives, once the upload is done, a warning for each link the scan left out (one
        leading outside DATA); a refused upload says its one line only.
        """
        from ..dataset.manifest import build_manifest
        from .blob import upload_dataset

        manifest = build_manifest(data_dir, name, labels=labels, progress=self.hashed)
        self.start_upload(len(manifest.entries), manifest.total_bytes)
        result = upload_dataset(data_dir, open_container(), prefix, manifest=manifest, progress=self.uploaded)
        for link in manifest.skipped if say else ():
            say(f"warning: left out {link['path']}: {link['reason']}")
        return result
