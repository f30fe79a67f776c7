"""`up --replace` as a swap: the old deployment keeps serving until the new one is ready, then
it is stopped; a new one that fails leaves the old one as it was (its record, key and log).

A swap needs both to run at once. Where they cannot — the same GPU (both would not fit), a
remote or multi-node Docker target or Slurm (the port is fixed there) — the old one is stopped
first, and `up` says so before it stops anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import state
from ..dockerhosts import is_remote
from ..runtimes import Pool
from ..state import Deployment, DockerPlace, ProcessPlace


def swap_blocker(old: Deployment, candidate: Any, where: Any) -> str | None:
    """Why the old and the new deployment cannot run side by side (None: they can)."""
    shared = set(old.gpu_uuids) & set((candidate.settings.gpu_uuids if candidate.settings else None) or [])
    if shared:
        return "both do not fit on the same GPU at once"
    if where.runtime not in ("process", "docker") or where.remote or where.multi:
        return "its port is fixed on that target"
    if old.runtime not in ("process", "docker") or is_remote(old.docker_host):
        return "the old one runs elsewhere"
    return None


class Swap:
    """The old deployment, set aside while its successor starts."""

    def __init__(self, old: Deployment, pool: Pool) -> None:
        self.old, self.pool = old, pool
        self.record = state.record_path(old.name).read_text()
        self.key = Path(old.api_key_file).read_text() if Path(old.api_key_file).exists() else None
        self.renamed: list[tuple[str | None, str, str]] = []      # (Docker host, id, old name)
        self.log_moved: tuple[Path, Path] | None = None

    def set_aside(self) -> None:
        """Free the names the new one needs: container names, the log file."""
        place = self.old.place
        if isinstance(place, DockerPlace):
            from ..backends import docker_api as dk
            from ..runtimes.docker import DockerRuntime

            rt = self.pool["docker"]
            assert isinstance(rt, DockerRuntime)
            for n in place.nodes:
                c = rt.clients.get(n.docker_host)
                was = dk.rename(c, n.container_id, f"kanoa-{self.old.name}-replaced-{n.container_id[:8]}")
                self.renamed.append((n.docker_host, n.container_id, was))
        elif isinstance(place, ProcessPlace):
            log = Path(place.log_file)
            if log.exists():
                aside = log.with_name(f"{log.stem}.replaced{log.suffix}")
                log.rename(aside)          # the old server keeps writing there (its open file)
                self.log_moved = (log, aside)

    def restore(self) -> None:
        """The new one did not start: the old one is as it was (its record and key first, so a
        host that fails the renames below still leaves it on record)."""
        state.write_atomic(state.record_path(self.old.name), self.record)
        if self.key is not None:
            state.write_atomic(state.key_path(self.old.name), self.key, mode=0o600)
        if self.log_moved is not None:
            log, aside = self.log_moved
            if log.exists():               # the failed start's log stays readable beside it
                log.replace(log.with_name(f"{log.stem}.failed{log.suffix}"))
            aside.replace(log)
        if self.renamed:
            from ..backends import docker_api as dk
            from ..runtimes.docker import DockerRuntime

            rt = self.pool["docker"]
            assert isinstance(rt, DockerRuntime)
            for host, cid, was in self.renamed:
                try:
                    dk.rename(rt.clients.get(host), cid, was)
                except Exception:  # noqa: BLE001 - it serves under the aside name; its record finds it by id
                    pass

    def finish(self) -> list[str]:
        """The new one is ready: stop exactly the old one (by its place, not by name)."""
        try:
            self.pool[self.old.runtime].stop("", self.old.place)
        except Exception as exc:  # noqa: BLE001 - the new one serves; say what is left
            return [f"the old {self.old.name} could not be stopped ({getattr(exc, 'message', exc)}): "
                    "`kanoa-local ps` lists it"]
        if self.log_moved is not None:
            self.log_moved[1].unlink(missing_ok=True)
        return [f"replaced the running {self.old.name} once the new one was ready"]
