"""Durable atomic file writes, the one helper the whole repository uses (the job and the client alike).

Why atomic: followers, resumed runs and other clients read these files while they are being
replaced (checkpoints, exit codes, metrics, container records, run state). Writing to a temporary
file in the same folder and renaming it over the target means a reader, or a kill -9 at any
moment, sees the old file or the new one, never half of one. The temporary name carries the pid,
so two processes writing the same file do not trample each other's temporary file.

Why durable: a rename alone survives a killed process, not a power cut or a kernel crash. The
filesystem may commit the rename before the file's data, leaving an empty or partial file under
the final name (ext4, xfs), or lose the rename itself. So the temporary file's data is flushed
(fsync) before the rename, and the folder after it, so that the new name is on disk too when
write_atomically returns. Torch-free: the client imports it.
"""
import errno
import os

# A filesystem that cannot sync (some FUSE and network mounts) answers fsync with one of these:
# the write then stays atomic, as durable as that filesystem can make it.
_CANNOT_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


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
        _sync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _sync(folder or os.curdir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _sync(path, flags):
    """fsync the file or folder at `path` (Linux syncs a file through a read-only descriptor too)."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _CANNOT_SYNC:
            raise
    finally:
        os.close(fd)
