"""Docker host URLs (unix://, tcp://, ssh://): which name another machine, and its address.
Pure, so records, targets and exports read them without loading docker-py."""

from __future__ import annotations

from urllib.parse import urlsplit

#: this machine's daemon when a record names none (the Engine's default socket)
LOCAL_SOCKET = "unix:///var/run/docker.sock"


def is_remote(host: str | None) -> bool:
    """Whether ``host`` (a Docker host URL) names another machine (tcp:// or ssh://)."""
    return bool(host) and str(host).startswith(("tcp://", "ssh://"))


def host_address(host: str) -> str:
    """The machine name or address in a Docker host URL: tcp://10.0.0.2:2375 -> 10.0.0.2,
    ssh://me@gpu-box -> gpu-box."""
    return urlsplit(host).hostname or host
