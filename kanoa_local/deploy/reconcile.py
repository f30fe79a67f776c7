"""What runs is the truth, the record a cache: match the records against what the runtimes find
by label (containers), environment marker (processes), job comment (Slurm) and label (objects).

A deployment found with no record is an *orphan* (a crash, a lost race, a killed `up`): it is
listed, `down` removes it, and it never blocks a new `up` of its name. Only a runtime that says
*dead* lets a record go; *unknown* keeps everything and says who did not answer.
"""

from __future__ import annotations

from typing import Any

from .. import state
from ..runtimes import Found, Pool, Unreachable
from ..state import Deployment, DockerPlace, K8sPlace, ProcessPlace, RecordUnreadable, SlurmPlace


def same_place(a: Any, b: Any) -> bool:
    """Whether two places name the same running thing."""
    if type(a) is not type(b):
        return False
    if isinstance(a, ProcessPlace):
        return bool(a.launch_id) and a.launch_id == b.launch_id or (a.pid == b.pid and not a.launch_id)
    if isinstance(a, DockerPlace):
        return bool({n.container_id for n in a.nodes} & {n.container_id for n in b.nodes})
    if isinstance(a, SlurmPlace):
        return a.job_id == b.job_id
    if isinstance(a, K8sPlace):
        return a.namespace == b.namespace
    return False


def discover(pool: Pool, records: list[Deployment], *, docker_hosts: list[str | None] | None = None,
             kinds: tuple[str, ...] = (), namespaces: list[K8sPlace] | None = None
             ) -> tuple[list[tuple[str, Found]], list[str]]:
    """Everything of this user's the runtimes can see: on this machine (processes, the local
    Docker daemon), every Docker host and Kubernetes namespace on record, and Slurm when a
    record (or ``kinds``) says it is used. Also the places that did not answer."""
    found: list[tuple[str, Found]] = []
    unreachable: list[str] = []
    hosts = list(dict.fromkeys([*(docker_hosts or []),
                                *(h for d in records if isinstance(d.place, DockerPlace) for h in d.place.hosts)]))
    plan: list[tuple[str, list[Any]]] = [("process", []), ("docker", hosts)]
    if "slurm" in kinds or any(d.runtime == "slurm" for d in records) or _slurm_here():
        plan.append(("slurm", []))
    k8s = [d.place for d in records if isinstance(d.place, K8sPlace)] + list(namespaces or [])
    if k8s:
        plan.append(("k8s", k8s))
    for kind, where in plan:
        try:
            got, bad = pool[kind].discover(where)
        except ImportError:
            continue
        found += [(kind, f) for f in got]
        unreachable += bad
    return found, unreachable


def salvage(name: str) -> tuple[list[str], list[K8sPlace], list[str]]:
    """Where the deployment of a damaged record may run, beyond this machine: the Docker hosts
    and the Kubernetes namespace still legible in what is left of it, then those of every other
    record (one user tends to use the same places). The third list: the legible ones, which
    must answer before the record may go."""
    import json
    import re

    try:
        text = state.record_path(name).read_text(errors="replace")
    except OSError:
        text = ""

    def legible(field: str) -> list[str]:
        return [json.loads(f'"{m}"') for m in re.findall(rf'"{field}"\s*:\s*"((?:[^"\\]|\\.)*)"', text)]

    hosts = [h for h in legible("docker_host") if h.startswith(("tcp://", "ssh://"))]
    places: list[K8sPlace] = []
    if '"k8s"' in text:
        ns, kc, ctx = legible("namespace"), legible("kubeconfig"), legible("context")
        places.append(K8sPlace(namespace=ns[0] if ns else "default", kubeconfig=kc[0] if kc else None,
                               context=ctx[0] if ctx else None, owner=state.owner_id()))
    named = list(dict.fromkeys(hosts)) + [f"Kubernetes namespace {p.namespace}" for p in places]
    for d in state.list_all()[0]:
        if isinstance(d.place, DockerPlace):
            hosts += [h for h in d.place.hosts if h]
        elif isinstance(d.place, K8sPlace):
            places.append(d.place)
    return list(dict.fromkeys(hosts)), places, named


def _slurm_here() -> bool:
    """A Slurm cluster this machine submits to (its client and a configuration): its jobs are
    looked for even without a record (a killed `up` may have left one)."""
    import os
    import shutil
    from pathlib import Path

    return shutil.which("squeue") is not None and bool(os.environ.get("SLURM_CONF") or Path("/etc/slurm/slurm.conf").exists())


def orphans(records: list[Deployment], found: list[tuple[str, Found]]) -> list[tuple[str, Found]]:
    """What runs without a record that names it — for containers, each one: a leftover of the
    same name beside the recorded ones (a replacement that could not stop the old) is one too."""
    out = []
    for k, f in found:
        rec = next((d for d in records if d.name == f.name and same_place(d.place, f.place)), None)
        if rec is None:
            out.append((k, f))
        elif isinstance(f.place, DockerPlace) and isinstance(rec.place, DockerPlace):
            known = {n.container_id for n in rec.place.nodes}
            extra = [n for n in f.place.nodes if n.container_id not in known]
            if extra:
                out.append((k, f.model_copy(update={"place": DockerPlace(nodes=extra)})))
    return out


def clear_for_up(name: str, pool: Pool, *, docker_hosts: list[str | None],
                 kinds: tuple[str, ...] = ()) -> tuple[Deployment | None, list[str]]:
    """Before `up NAME` (under its lock): the live deployment of that name, or None once every
    leftover of it (a dead record, an orphan) is removed; what was done, as notes. A place that
    does not answer stops `up` with nothing changed."""
    notes: list[str] = []
    rec: Deployment | None = None
    broken: RecordUnreadable | None = None
    try:
        rec = state.find(name)
    except RecordUnreadable as exc:
        if exc.details.get("schema_version"):
            raise                      # a newer kanoa-local's: leave it to that one
        broken = exc
    records = [rec] if rec is not None else []
    found, _ = discover(pool, records, docker_hosts=docker_hosts, kinds=kinds)
    mine = [(k, f) for k, f in found if f.name == name]
    live = None
    if rec is not None:
        lv = pool[rec.runtime].liveness(rec)
        if lv.unknown:
            raise Unreachable(f"cannot tell whether {name!r} still runs: {lv.reason}",
                              remedy="nothing was changed: try again once it answers, or use another --name")
        if lv.alive:
            live = rec
        else:
            pool[rec.runtime].stop(name, rec.place)
            state.remove(name)
            from . import prices

            prices.release({rec.served_model_name})      # its price too, unless another serves it
            notes.append(f"the earlier {name} had stopped ({lv.reason}): its leftovers are removed")
    elif broken is not None:
        if any(f.running for _, f in mine):
            raise RecordUnreadable(f"{broken.message}, and a server of that name still runs",
                                   remedy=f"`kanoa-local down {name}` removes both; then `up` again")
        state.remove(name)
        notes.append(f"the damaged record of {name} is removed")
    for kind, f in orphans(records, mine):
        pool[kind].stop(name, f.place)
        notes.append(f"removed a {kind} leftover of {name} that had no record")
    return live, notes
