"""The state dir's files: durable atomic writes, the check that a record can be written before
anything starts, and one lock per deployment name."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, UsageError
from .settings import state_dir

#: what a record, its key and a log need at least before anything is started
MIN_FREE_BYTES = 1 << 20


class StateDirError(ConfigError):
    """The state dir cannot take a record (read-only, full, not a folder)."""


# ----------------------------------------------------------------------------- files


def _state_error(exc: OSError, path: Path) -> StateDirError:
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        why, remedy = "the disk is full", "free some space there, or set KANOA_LOCAL_HOME to another folder"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why, remedy = "it is not writable", "fix its permissions, or set KANOA_LOCAL_HOME to a writable folder"
    else:
        why, remedy = exc.strerror or str(exc), "check that folder, or set KANOA_LOCAL_HOME to another one"
    return StateDirError(f"kanoa-local cannot write its state in {path.parent}: {why}", remedy=remedy)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` all or nothing, and durably (fsync before and after the rename).
    An OSError (read-only, full) becomes one :class:`StateDirError` line; no temp file stays."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _state_error(exc, path) from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def check_writable() -> None:
    """Prove that the state dir takes a record (and has room for one) before anything starts."""
    folder = state_dir() / "deployments"
    probe = folder / ".write-test"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
            raise OSError(errno.ENOSPC, "no space left")
    except OSError as exc:
        raise _state_error(exc, probe) from exc
    write_atomic(probe, "ok\n")
    probe.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- locks


class NameBusy(UsageError):
    """Another kanoa-local holds the lock of this name for longer than we wait."""


@contextlib.contextmanager
def flocked(path: Path, *, wait: float | None = None, on_wait: Any = None, busy: Any = None,
            folder: bool = False) -> Iterator[None]:
    """Hold the kernel's exclusive flock on ``path``: a lock file (created 0600), or with
    ``folder`` the folder itself (no file is left in it). ``wait`` None blocks until it is
    free; else after ``wait`` seconds ``busy()`` is raised. ``on_wait()`` is called once when
    it starts waiting. A killed holder releases it. Opening raises OSError."""
    fd = os.open(path, os.O_RDONLY) if folder else os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = None if wait is None else time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise busy() from None
                if not told and on_wait is not None:
                    on_wait()
                    told = True
                if deadline is None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    break
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)      # closing releases the flock


@contextlib.contextmanager
def lock(name: str, *, wait: float = 0, on_wait: Any = None) -> Iterator[None]:
    """Hold the lock of deployment ``name`` (one name, one lock) around check → start → save.
    A second holder waits up to ``wait`` seconds (``on_wait()`` is called once when it starts
    waiting), then gets :class:`NameBusy`."""
    folder = state_dir() / "locks"
    path = folder / f"{name}.lock"
    with contextlib.ExitStack() as held:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            held.enter_context(flocked(path, wait=wait, on_wait=on_wait, busy=lambda: NameBusy(
                f"another kanoa-local is starting or stopping {name!r} right now",
                remedy="wait for it to finish (`kanoa-local ps`), or use another --name")))
        except OSError as exc:
            raise _state_error(exc, path) from exc
        yield


def lock_held(name: str) -> bool:
    """Whether some process holds deployment ``name``'s lock right now (an `up` or `down` under
    way), read from the kernel's lock table without taking the lock (taking it, even for a moment,
    could turn a concurrent `up` away). False where the table cannot be read."""
    try:
        st = (state_dir() / "locks" / f"{name}.lock").stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return False
    me = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any(len(f) > 5 and f[1] == "FLOCK" and f[5] == me for f in (line.split() for line in table.splitlines()))
