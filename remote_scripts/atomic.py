"""Atomic file writes, the one helper the whole repository uses (the job and the client alike).

Why atomic: followers, resumed runs and other clients read these files while they are being
replaced (checkpoints, exit codes, metrics, container records). Writing to a temporary file in the
same folder and renaming it over the target means a reader, or a kill -9 at any moment, sees the
old file or the new one, never half of one. The temporary name carries the pid, so two processes
writing the same file do not trample each other's temporary file. Torch-free: the client imports it.
"""
import os


def write_atomically(path, content):
    """Replace `path` with `content`: bytes, str (UTF-8), or a callable that writes a given path.

    A str is encoded with surrogateescape: a file name that is not UTF-8 (os.walk names it with
    surrogate escapes) is written as its own bytes instead of failing the write (predictions.csv).

    The callable form serves writers that insist on a file name (torch.save, torch.onnx.export).
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        if callable(content):
            content(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(content.encode(errors="surrogateescape") if isinstance(content, str) else content)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
