"""The host port a deployment listens on: free now, or the next one that is."""

from __future__ import annotations

import socket

from ..errors import EngineError


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` now (IPv4 or IPv6)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
            return True
        except OSError:
            return False


def pick_port(host: str, port: int, tries: int = 20) -> int:
    for p in range(port, min(port + tries, 65536)):
        if port_free(host, p):
            return p
    raise EngineError(f"ports {port}-{min(port + tries, 65536) - 1} are all in use on {host}",
                      remedy="choose another --port, or `kanoa-local ps` / `down` to free one")
