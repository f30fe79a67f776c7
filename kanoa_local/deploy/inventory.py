"""`ps`, `down` and `connect`: records reconciled with what runs (see :mod:`.reconcile`)."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

from .. import state
from ..errors import DeploymentNotFound, EngineError, KanoaError, UsageError
from ..runtimes import Pool, Unreachable
from ..state import Deployment, DockerPlace, ProcessPlace, RecordUnreadable, reach_address, url_host
from ..statefiles import lock_held
from .reconcile import discover, orphans, salvage, same_place


class PsRow(BaseModel):
    name: str
    runtime: str
    model: str
    base_url: str
    state: Literal["running", "dead", "unknown"]
    reason: str = Field("", description="dead: what is gone; unknown: who did not answer")
    orphan: bool = Field(False, description="runs without a record (`down NAME` removes it)")
    pid: int | None = None
    container_id: str | None = None
    uptime_s: float | None = None
    docker_host: str | None = Field(None, description="the remote Docker host, when not this machine")
    nodes: int = Field(1, description="containers on as many Docker hosts (multi-node)")


class PsReport(BaseModel):
    deployments: list[PsRow]
    unreadable: list[str] = Field(default_factory=list, description="records that could not be read")
    problems: list[str] = Field(default_factory=list,
                                description="damaged records and places that did not answer")


class DownResult(BaseModel):
    removed: list[str]


def _ids(place: object) -> tuple[int | None, str | None, str | None, int]:
    if isinstance(place, ProcessPlace):
        return place.pid, None, None, 1
    if isinstance(place, DockerPlace):
        return None, place.head.container_id[:12], place.head.docker_host, len(place.nodes)
    return None, None, None, 1


def ps() -> PsReport:
    deps, broken = state.list_all()
    rows = []
    now = time.time()
    with Pool() as pool:
        for d in deps:
            lv = pool[d.runtime].liveness(d)
            pid, cid, dh, n = _ids(d.place)
            rows.append(PsRow(name=d.name, runtime=d.runtime, model=d.model_id, base_url=d.base_url,
                              state="running" if lv.alive else lv.state, reason=lv.reason, pid=pid,  # type: ignore[arg-type]
                              container_id=cid, docker_host=dh, nodes=n,
                              uptime_s=round(now - d.created_at, 1) if lv.alive else None))
        found, unreachable = discover(pool, deps)
    for kind, f in orphans(deps, found):
        pid, cid, dh, n = _ids(f.place)
        port = f.port or 0
        # started but not yet on record: the `up` that holds its name's lock writes the record
        busy = lock_held(f.name)
        rows.append(PsRow(name=f.name, runtime=kind, model=f.model, orphan=not busy,
                          base_url=f"http://{url_host(reach_address(f.listen, dh))}:{port}/v1" if port else "",
                          state="running" if f.running else "dead",
                          reason="an `up` or `down` of this name is under way" if busy else
                          f"no record: `kanoa-local down {f.name}` removes it",
                          pid=pid, container_id=cid, docker_host=dh, nodes=n))
    problems = [f"{n}: {why}" for n, why in broken.items()] + [f"{u} did not answer" for u in unreachable]
    return PsReport(deployments=rows, unreadable=sorted(broken), problems=problems)


def _known_names(pool: Pool) -> list[str]:
    deps, broken = state.list_all()
    found, _ = discover(pool, deps)
    return sorted({d.name for d in deps} | set(broken) | {f.name for _, f in found})


def _down_one(name: str, pool: Pool) -> tuple[bool, set[str]]:
    """Stop and remove everything of ``name`` (its record's place and whatever else runs under
    the name), then forget it; False when there was nothing, with the names that were seen
    (for the "there are" of the error). A place that does not answer raises
    :class:`Unreachable` after every other one was tried, and the record stays."""
    rec: Deployment | None = None
    broken = False
    try:
        rec = state.find(name)
    except RecordUnreadable as exc:
        if exc.details.get("schema_version"):
            raise
        broken = True
    records = [rec] if rec is not None else []
    if broken:
        # the record does not say where it ran: every place it or the other records still name
        hosts, places, named = salvage(name)
        found, unreachable = discover(pool, records, docker_hosts=list(hosts), namespaces=places)
        silent = [u for u in unreachable if any(n in u for n in named)]
        if silent:
            raise Unreachable(f"the damaged record of {name} names {', '.join(silent)}, which did not answer",
                              remedy=f"the record is kept: run `kanoa-local down {name}` again once it answers")
    elif rec is not None:
        found, _ = discover(pool, records, docker_hosts=rec.place.hosts if isinstance(rec.place, DockerPlace) else None)
    else:
        # no record of the name: an orphan may run wherever the other records run
        others, unreadable = state.list_all()
        found, _ = discover(pool, others)
    targets = [(rec.runtime, rec.place)] if rec is not None else []
    targets += [(k, f.place) for k, f in found if f.name == name
                and not (rec is not None and same_place(rec.place, f.place))]
    if not targets and rec is None and not broken and not state.key_path(name).exists():
        return False, {d.name for d in others} | set(unreadable) | {f.name for _, f in found}
    failed: list[str] = []
    for kind, place in targets:
        try:
            pool[kind].stop(name, place)
        except KanoaError as exc:          # every place is tried; the record stays while any failed
            failed.append(exc.message)
    if failed:
        raise Unreachable("; ".join(failed), remedy=f"the record of {name} is kept: run `kanoa-local down {name}` "
                                                     "again once it answers")
    state.remove(name)
    return True, set()


def down(name: str | None = None, *, all_: bool = False) -> DownResult:
    """Stop and forget ``name`` (or every deployment); kanoa's price for a served name goes
    with the last deployment that serves it."""
    from . import prices

    removed: list[str] = []
    failed: list[str] = []
    served: set[str] = set()
    with Pool() as pool:
        if all_:
            names = _known_names(pool)
        elif name is None:
            names = _known_names(pool)
            if len(names) != 1:
                raise UsageError("which deployment? " + ("there are: " + ", ".join(names) if names else "nothing is running"),
                                 remedy="give a name (`kanoa-local ps`) or --all")
        else:
            names = [state.check_name(name)]
        for n in names:
            try:
                with state.lock(n, wait=15):
                    try:
                        rec = state.find(n)
                    except KanoaError:
                        rec = None
                    gone, seen = _down_one(n, pool)
                    if gone:
                        removed.append(n)
                        if rec is not None:
                            served.add(rec.served_model_name)
                    elif not all_:
                        others = sorted(seen - {n})
                        raise DeploymentNotFound(f"no deployment named {n!r}" + (
                            f"; there are: {', '.join(others)}" if others else ""),
                            remedy="`kanoa-local ps` lists them")
            except DeploymentNotFound:
                raise
            except KanoaError as exc:      # the other names are still tried
                failed.append(f"{n}: {exc.message}")
    prices.release(served)
    if failed:
        raise Unreachable("; ".join(failed) + (f" (removed: {', '.join(removed)})" if removed else ""),
                          remedy="what did not answer is kept: run `kanoa-local down` again once it does")
    return DownResult(removed=removed)


def connect(name: str | None = None) -> Deployment:
    """A running deployment: ``name``, or the only one running; one on an ssh:// host comes
    with its SSH tunnel open (reopened when it had closed)."""
    dep = _connect(name)
    if dep.tunnel is not None:
        from ..runtimes.tunnel import is_open

        if not is_open(dep.tunnel):
            reopen_tunnel(dep.name)
            dep = state.load(dep.name)
    return dep


class TunnelReport(BaseModel):
    name: str
    base_url: str
    local_port: int
    docker_host: str
    reopened: bool
    note: str = ""


def reopen_tunnel(name: str) -> TunnelReport:
    """The SSH tunnel of ``name`` (a deployment on an ssh:// host) open: kept when it listens,
    else started again, under the name's lock."""
    from ..runtimes.tunnel import reopen

    name = state.check_name(name)
    with state.lock(name, wait=60):
        dep = state.load(name)
        if dep.tunnel is None:
            raise UsageError(f"{name!r} has no SSH tunnel (it is not kept on an ssh:// host's loopback)",
                             remedy=f"`kanoa-local status {name}` shows where it is reached")
        dep, note = reopen(dep)
    assert dep.tunnel is not None
    return TunnelReport(name=name, base_url=dep.base_url, local_port=dep.tunnel.local_port,
                        docker_host=dep.tunnel.docker_host, reopened=bool(note), note=note)


def _connect(name: str | None) -> Deployment:
    with Pool() as pool:
        if name is not None:
            dep = state.load(state.check_name(name))
            lv = pool[dep.runtime].liveness(dep)
            if lv.unknown:
                raise Unreachable(f"cannot tell whether {name!r} runs: {lv.reason}", remedy="try again once it answers")
            if not lv.alive:
                raise EngineError(f"deployment {name!r} is not running ({lv.reason})",
                                  remedy=f"`kanoa-local up --name {name}` starts it again")
            return dep
        deps = [d for d in state.list_all()[0] if pool[d.runtime].liveness(d).alive]
    if len(deps) == 1:
        return deps[0]
    if not deps:
        raise DeploymentNotFound("no deployment is running", remedy="start one with `kanoa-local up`")
    raise UsageError("several deployments are running: " + ", ".join(d.name for d in deps),
                     remedy="name one, e.g. connect(\"" + deps[0].name + "\")")
