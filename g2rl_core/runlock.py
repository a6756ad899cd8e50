"""One writer per run directory: ``with run_lock(out):`` around ``g2rl train`` and ``g2rl eval``.

The lock is an exclusive ``flock`` on ``<directory>/.g2rl.lock``. The kernel releases it when the
holding process ends, however it ends (SIGKILL included), so a crashed run never leaves a stale
lock behind. While held, the file names the holder (pid, host, start time); on release it is
emptied again, so a finished run directory holds an empty ``.g2rl.lock`` whatever ran in it.

A second ``run_lock`` on the same directory, from another process or another thread, raises
``RunLockedError`` at once (it does not wait), naming the holder. The same thread may nest
``run_lock`` on one directory (a command and the function it calls can both take it).
``flock`` is local to a machine; on network file systems that do not support it, the lock is
only as good as the file system's emulation.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from g2rl_core.errors import ConfigError, G2RLError

try:
    import fcntl
except ImportError:  # pragma: no cover (not POSIX)
    fcntl = None

LOCK_NAME = ".g2rl.lock"


class RunLockedError(G2RLError):
    """Another process (or thread) holds the run directory's lock."""


_held: dict[str, tuple[int, int, int]] = {}  # real path -> (fd, depth, owning thread id)
_held_guard = threading.Lock()


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its name yet"


@contextlib.contextmanager
def run_lock(directory: str | Path) -> Iterator[Path]:
    """Hold the lock of ``directory`` (created if missing) for the ``with`` block; yields the lock file.

    Raises:
        RunLockedError: the lock is held elsewhere; the message names the holder's pid and host.
        ConfigError: ``directory`` is a file, or cannot be created or written.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"output directory {directory} is a file; give a directory (a new or existing folder)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create output directory {directory}: {err.strerror}; choose another") from None
    path = directory / LOCK_NAME
    key = os.path.realpath(path)
    me = threading.get_ident()
    with _held_guard:
        held = _held.get(key)
        if held is not None and held[2] == me:
            _held[key] = (held[0], held[1] + 1, me)
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield path
        finally:
            with _held_guard:
                fd, depth, _ = _held[key]
                _held[key] = (fd, depth - 1, me)
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise ConfigError(
            f"cannot write to output directory {directory} ({err.strerror}); choose a writable directory"
        ) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ConfigError(f"cannot lock {path} ({err.strerror})") from None
                raise RunLockedError(
                    f"{directory} is in use by another g2rl process ({_holder(fd)}); wait for it to finish "
                    f"or choose another output directory (the lock goes when that process exits)"
                ) from None
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {stamp}\n".encode(), 0)
        with _held_guard:
            _held[key] = (fd, 1, me)
        try:
            yield path
        finally:
            with _held_guard:
                _held.pop(key, None)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _forget_in_child() -> None:
    """A forked child does not own its parent's locks (it must take its own)."""
    global _held_guard
    _held.clear()
    _held_guard = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
