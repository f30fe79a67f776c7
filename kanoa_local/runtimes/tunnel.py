"""SSH tunnels to servers kept on an ssh:// Docker host's loopback.

A server on another machine reached over ``ssh://`` is published on that machine's loopback
only, so nobody on its network reaches the port; this machine reaches it through ``ssh -N -L``
(OpenSSH, with the user's own configuration, keys and known hosts), a process of its own
session that outlives `up` and goes with `down`. ``$KANOA_LOCAL_SSH`` replaces the ``ssh``
command (for example ``ssh -F ~/.ssh/lab_config``), as ``GIT_SSH_COMMAND`` does for git.

The tunnel process carries the deployment's name and owner in its environment, and its pid
and start time are recorded: a pid that belongs to another process now is never signalled,
and a tunnel whose record was lost is still found (and closed) by name.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import EngineError, UsageError
from ..state import Deployment, DockerPlace, SshTunnel, elsewhere, owner_id, save, state_dir, this_machine
from .process import _started, listens, marked, same_process, terminate

TUNNEL_ENV, OWNER_ENV = "KANOA_LOCAL_TUNNEL", "KANOA_LOCAL_OWNER"
SSH_ENV = "KANOA_LOCAL_SSH"
#: how long the SSH connection may take to authenticate and bind the local port (a busy host or
#: a slow DNS lookup on its side can take tens of seconds)
OPEN_TIMEOUT_S = 120.0


def ssh_command() -> list[str]:
    """The ssh command line to start from: ``$KANOA_LOCAL_SSH`` or ``ssh``."""
    raw = os.environ.get(SSH_ENV, "").strip() or "ssh"
    try:
        argv = shlex.split(raw)
    except ValueError as exc:
        raise UsageError(f"${SSH_ENV} cannot be read as a command ({exc})",
                         remedy=f"set {SSH_ENV} to a command line such as `ssh -F ~/.ssh/config`") from None
    if shutil.which(argv[0]) is None:
        raise EngineError(f"an ssh:// host is reached through an SSH tunnel, and there is no `{argv[0]}` here",
                          remedy="install OpenSSH's client (`apt-get install openssh-client`), or publish "
                                 "on one of that machine's addresses with --host ADDR (the network then reaches it)")
    return argv


def destination(docker_host: str) -> list[str]:
    """ssh://user@box:2222 -> ['-p', '2222', 'user@box']."""
    u = urlsplit(docker_host)
    if not u.hostname:
        raise UsageError(f"{docker_host}: no host in the ssh:// URL", remedy="use ssh://user@host")
    dest = f"{u.username}@{u.hostname}" if u.username else u.hostname
    return (["-p", str(u.port)] if u.port else []) + [dest]


def _forward(local_port: int, remote_port: int) -> str:
    return f"127.0.0.1:{local_port}:127.0.0.1:{remote_port}"


def _free_local_port(prefer: int) -> int:
    """``prefer`` when nothing listens on it here, else one the kernel hands out."""
    for port in (prefer, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return int(s.getsockname()[1])
            except OSError:
                continue
    raise EngineError("no free port on this machine's loopback for the SSH tunnel",
                      remedy="free a port, or publish on an address of that machine with --host ADDR")


def _last_words(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def open_tunnel(docker_host: str, remote_port: int, *, name: str, prefer_port: int | None = None,
                timeout: float = OPEN_TIMEOUT_S, tries: int = 3) -> SshTunnel:
    """Start ``ssh -N -L 127.0.0.1:L:127.0.0.1:R`` to ``docker_host`` and wait until it listens
    here. One line when ssh refuses (its own last words and what to check); nothing is left."""
    argv0 = ssh_command()
    log = state_dir() / "logs" / f"{name}.tunnel.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, TUNNEL_ENV: name, OWNER_ENV: owner_id()}
    last = ""
    for _ in range(tries):
        local = _free_local_port(prefer_port or remote_port)
        argv = [*argv0, "-N", "-T", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "ControlPath=none",
                "-o", "ConnectTimeout=60", "-L", _forward(local, remote_port), *destination(docker_host)]
        with open(log, "ab") as out:
            out.write(f"$ {shlex.join(argv)}\n".encode())     # no secret in it: keys stay in ssh's files
            out.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                    start_new_session=True, close_fds=True)
        try:
            started = _started(proc.pid)
            p = None
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                p = p or same_process(proc.pid, started, _forward(local, remote_port))
                if p is not None and listens(p, local):
                    return SshTunnel(pid=proc.pid, started_at=started, local_port=local, remote_port=remote_port,
                                     docker_host=docker_host, log_file=str(log), machine=this_machine())
                time.sleep(0.1)
        except BaseException:
            _reap(proc)
            raise
        waited = proc.poll() is None
        _reap(proc)
        words = _last_words(log)
        last = (f"no answer within {timeout:.0f} s" if waited else f"ssh exited ({proc.returncode})") + (
            f": {words}" if words and not words.startswith("$ ") else "")
        if "forward" not in last.lower() and "address already in use" not in last.lower():
            break                               # not a port taken meanwhile: trying again will not help
        prefer_port = None
    raise EngineError(f"the SSH tunnel to {docker_host} did not open: {last or 'no answer in time'}",
                      remedy="check that `ssh` to that host works without a prompt (key, known_hosts; "
                             f"${SSH_ENV} sets the command), or publish on an address of it with --host ADDR")


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def process(t: SshTunnel) -> Any:
    """The recorded tunnel process (a psutil Process), while the pid still is it: the same
    start time and forward."""
    if elsewhere(t.machine):
        return None
    return same_process(t.pid, t.started_at, _forward(t.local_port, t.remote_port))


def is_open(t: SshTunnel) -> bool:
    p = process(t)
    return p is not None and listens(p, t.local_port)


def close(name: str, t: SshTunnel | None = None) -> None:
    """Stop the recorded tunnel (when the pid still is it) and any other tunnel of this user's
    deployment ``name`` on this machine (one whose record was lost)."""
    procs = [p for p in [process(t)] if p is not None] if t is not None else []
    if name:
        seen = {p.pid for p in procs}
        procs += [p for p in marked({TUNNEL_ENV: name, OWNER_ENV: owner_id()}) if p.pid not in seen]
    if procs:
        terminate(procs, timeout=5)


def reopen(dep: Deployment) -> tuple[Deployment, str]:
    """``dep`` with its SSH tunnel open: the recorded one when it still listens, else a new one
    (on the same local port when that is free), saved in the record. The note says what
    happened ('' when nothing had to)."""
    t = dep.tunnel
    if t is None:
        return dep, ""
    if is_open(t):
        return dep, ""
    close(dep.name, t)
    new = open_tunnel(t.docker_host, t.remote_port, name=dep.name, prefer_port=t.local_port)
    assert isinstance(dep.place, DockerPlace)
    dep = dep.model_copy(update={"place": dep.place.model_copy(update={"tunnel": new})})
    save(dep)
    moved = "" if new.local_port == t.local_port else f", now on 127.0.0.1:{new.local_port}"
    return dep, f"the SSH tunnel to {t.docker_host} was closed: reopened{moved}"
