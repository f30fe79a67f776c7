"""Docker host URLs (unix://, tcp://, ssh://): which name another machine, and its address.
Pure, so records, targets and exports read them without loading docker-py."""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlsplit

from .errors import cause_chain

#: this machine's daemon when a record names none (the Engine's default socket)
LOCAL_SOCKET = "unix:///var/run/docker.sock"


def is_remote(host: str | None) -> bool:
    """Whether ``host`` (a Docker host URL) names another machine (tcp:// or ssh://)."""
    return bool(host) and str(host).startswith(("tcp://", "ssh://"))


def is_ssh(host: str | None) -> bool:
    """Whether ``host`` is reached over SSH (ssh://): a server there can stay on its loopback."""
    return bool(host) and str(host).startswith("ssh://")


def bind_address(host: str) -> str:
    """The one address of a remote Docker host to publish a server on: the address in its URL,
    or what its name resolves to here (the address this machine reaches it by). ValueError when
    the name does not resolve."""
    import ipaddress
    import socket

    name = host_address(host)
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ValueError(f"{name} does not resolve here ({exc.strerror or exc})") from None
    return str(sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0][4][0])


def host_address(host: str) -> str:
    """The machine name or address in a Docker host URL: tcp://10.0.0.2:2375 -> 10.0.0.2,
    ssh://me@gpu-box -> gpu-box."""
    return urlsplit(host).hostname or host


def classify_unreachable(exc: BaseException) -> tuple[str, str]:
    """Why a daemon did not answer (permission, not installed, not running) and the remedy."""
    chain = cause_chain(exc)
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, PermissionError) for e in chain) or "Permission denied" in text:
        return "permission-denied", (
            "add your user to the docker group (`sudo usermod -aG docker $USER`, then log in "
            "again) or run as root")
    local = not os.environ.get("DOCKER_HOST", "").startswith(("tcp://", "ssh://"))
    if local and not (shutil.which("dockerd") or shutil.which("docker")):
        return "not-installed", (
            "install Docker Engine (Debian/Ubuntu: `apt-get install docker.io`), or use "
            "`--runtime process`")
    return "not-running", (
        "start Docker (`sudo systemctl start docker`, or `sudo dockerd &` without systemd)"
        if local else "check that the daemon at $DOCKER_HOST is up and reachable")
