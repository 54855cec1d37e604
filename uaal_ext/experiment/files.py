"""Files of a run: atomic writes (a reader, or a run killed mid-write, sees the old file or the new
one, never half of one) for training checkpoints, round weights and the active-learning state; and
the lock that keeps two processes out of one output folder."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any, BinaryIO

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_write", "FolderLock", "FolderInUseError", "LOCK_FILE"]

LOCK_FILE = ".uaal.lock"


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Calls ``write(file)`` on a temporary file beside ``path``, syncs it, then renames it onto ``path``.

    The directory is created if needed; on any failure the temporary file is removed and ``path`` is
    left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        # mkstemp creates the file private (0600); give it the mode open() would, like every other output.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


class FolderInUseError(RuntimeError):
    """Another process holds the output folder's lock."""


_HELD: set[str] = set()  # folders this process holds: POSIX record locks do not exclude their own process


class FolderLock:
    """Holds ``folder/.uaal.lock`` for one process at a time, as a context manager.

    The lock is a POSIX record lock (``fcntl.lockf``), which the kernel drops when its process dies,
    so a lock left by a killed run is taken over by the next one; on NFS it holds across machines
    where the server supports locking. The file names the holder (host, pid, start time), so a
    second process stops with :class:`FolderInUseError` saying who has the folder.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = os.path.abspath(os.fspath(folder))
        self.path = os.path.join(self.folder, LOCK_FILE)
        self.previous: dict[str, Any] | None = None  # the holder named in a lock taken over
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        if self.folder in _HELD:
            raise FolderInUseError(f"{self.folder!r} is already in use by this process (pid {os.getpid()})")
        os.makedirs(self.folder, exist_ok=True)
        if fcntl is None:
            _HELD.add(self.folder)
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            who = (
                f"process {holder.get('pid')} on host {holder.get('host')!r} (since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))})"
                if holder
                else "another process"
            )
            raise FolderInUseError(
                f"{self.folder!r} is in use by {who}: wait for it to finish, or choose another output folder"
            ) from None
        self.previous = _read_holder(fd)  # a killed run's lock: the kernel released it, its note stays
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd
        _HELD.add(self.folder)
        return self

    def __exit__(self, *exc: object) -> None:
        _HELD.discard(self.folder)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # no holder named once it is free
            os.close(self._fd)  # closing releases the record lock
            self._fd = None


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
