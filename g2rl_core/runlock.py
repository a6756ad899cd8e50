"""One process at a time in a run directory.

``run_lock(directory)`` holds an exclusive ``flock`` on ``<directory>/run.lock`` and writes the
holder's pid, host and start time into it. A second holder fails at once with a ``G2RLError``
that names the first one's pid and host. The kernel drops a ``flock`` when its process dies (also
under SIGKILL), so a lock file left by a dead pid is simply taken over and rewritten.

Details:

- Re-entrant within one thread (the CLI takes the lock before it inspects a checkpoint, and
  ``Trainer.train`` takes it again); another thread of the same process is refused like any
  other holder.
- The file is removed on release. A contender that opened the old file before the removal sees
  that its inode is no longer the one at the path and retries, so two processes never hold it.
- A forked child (``multiprocessing`` with ``fork``) drops its copy of the descriptor, so an
  orphaned child cannot keep a dead parent's lock alive.
- ``flock`` is host-local on some network file systems (NFS mounted with ``local_lock=flock``);
  there two hosts are not kept apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from g2rl_core.errors import ConfigError, G2RLError


class RunLockedError(G2RLError):
    """Another process (or thread) holds the run directory's lock; the message names the holder."""


LOCK_NAME = "run.lock"

_guard = threading.Lock()
_held: dict[str, list] = {}  # realpath of the lock file -> [fd, owning thread id, depth]


def _close_inherited() -> None:
    """In a forked child: let go of the parent's lock descriptors (the parent keeps its lock)."""
    for fd, _, _ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_inherited)


def _holder(fd: int) -> str:
    """'pid 123 on host h (since ...)' from the lock file, or a generic phrase if it is unreadable."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {int(info['pid'])} on host {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (holder not yet recorded)"


def _acquire(path: Path) -> int:
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise G2RLError(
                f"cannot create the run lock {path}: {err.strerror}; check that --out is a writable directory"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{path.parent} is in use by {holder}: wait for that run to finish or use another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file between our open and flock: try the new one
    raise G2RLError(f"could not take the run lock {path}: it kept changing; is another process looping on it?")


@contextlib.contextmanager
def run_lock(directory: str | Path) -> Iterator[Path]:
    """Hold ``<directory>/run.lock`` for the body (creating ``directory``); yields the lock path.

    Raises ``RunLockedError`` naming the holder's pid and host if another process (or thread) holds it,
    and ``ConfigError`` if ``directory`` is a file or cannot be created.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file; pass a directory as --out")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the run directory {directory}: {err.strerror}; pass another --out") from None
    path = directory / LOCK_NAME
    key = os.path.realpath(path)
    me = threading.get_ident()
    with _guard:
        entry = _held.get(key)
        if entry is not None and entry[1] == me:
            entry[2] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield path
        finally:
            with _guard:
                _held[key][2] -= 1
        return
    fd = _acquire(path)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[:8],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    with _guard:
        _held[key] = [fd, me, 1]
    try:
        yield path
    finally:
        with _guard:
            _held.pop(key, None)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still holding the flock: contenders re-check the inode
        os.close(fd)
