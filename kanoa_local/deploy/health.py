"""`status` and `logs`: a deployment's health, vLLM's counters, its GPUs, its engine output."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, Field

from .. import state
from ..errors import DeploymentNotFound, UsageError, redact
from ..runtimes import Pool, for_kind
from ..dockerhosts import is_remote
from ..state import Deployment

class Metrics(BaseModel):
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None


class GpuUse(BaseModel):
    uuid: str
    name: str
    memory_used: int
    memory_total: int
    processes: list[str] = Field(default_factory=list, description="'name (pid N, X GiB)'")


class StatusReport(BaseModel):
    name: str
    state: Literal["running", "starting", "dead", "unknown"]
    reason: str = Field("", description="dead: what is gone; unknown: who did not answer")
    stage: str | None = Field(None, description="starting: the engine's stage, read from its log")
    healthy: bool
    model: str
    base_url: str
    runtime: str
    api_key_hint: str
    uptime_s: float | None = None
    metrics: Metrics | None = None
    cost_usd: float | None = Field(None, description="estimated cost of every token served so far "
                                                     "(prompt + generated, at the deployment's rate)")
    gpus: list[GpuUse] = []
    deployment: Deployment


def _get(url: str, timeout: float = 5, key: str | None = None, context: Any = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, ""


_METRIC = re.compile(r"^(vllm:[a-z_]+)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", re.M)


def parse_metrics(text: str) -> Metrics:
    """The Prometheus counters/gauges of vLLM that `status` shows (summed over labels)."""
    vals: dict[str, float] = {}
    for m in _METRIC.finditer(text):
        vals[m.group(1)] = vals.get(m.group(1), 0.0) + float(m.group(2))
    kv = vals.get("vllm:kv_cache_usage_perc", vals.get("vllm:gpu_cache_usage_perc"))
    return Metrics(requests_running=vals.get("vllm:num_requests_running"),
                   requests_waiting=vals.get("vllm:num_requests_waiting"), kv_cache_usage=kv,
                   prompt_tokens=vals.get("vllm:prompt_tokens_total"),
                   generation_tokens=vals.get("vllm:generation_tokens_total"))


def gpu_use(uuids: list[str], nvml: Any = None) -> list[GpuUse]:
    """Memory in use on these GPUs and who holds it, from NVML (``nvml``: a replay in tests)."""
    if not uuids:
        return []
    from ..probe import probe

    try:
        prof = probe(nvml, docker=False)
    except Exception:  # noqa: BLE001 - status must not fail because NVML did
        return []
    out = []
    for g in prof.gpus:
        if g.uuid in uuids:
            procs = [f"{p.name or '?'} (pid {p.pid}" + (f", {p.used_memory / 1024**3:.1f} GiB)" if p.used_memory else ")")
                     for p in g.processes]
            out.append(GpuUse(uuid=g.uuid, name=g.name, memory_used=g.memory_used,
                              memory_total=g.memory_total, processes=procs))
    return out


def _one(name: str | None) -> Deployment:
    if name is not None:
        return state.load(state.check_name(name))
    deps, _ = state.list_all()
    if len(deps) != 1:
        raise UsageError("which deployment? " + ("there are: " + ", ".join(d.name for d in deps) if deps
                                                  else "nothing is running"),
                         remedy="give a name (`kanoa-local ps`)")
    return deps[0]


def status(name: str | None = None, *, nvml: Any = None) -> StatusReport:
    dep = _one(name)
    with Pool() as pool:
        lv = pool[dep.runtime].liveness(dep)
    root = dep.base_url.rsplit("/v1", 1)[0]
    key = state.read_api_key(dep) if Path(dep.api_key_file).exists() else ""
    closed = ""
    if lv.alive and dep.tunnel is not None:
        from ..runtimes.tunnel import is_open

        if not is_open(dep.tunnel):
            closed = (f"the SSH tunnel to {dep.tunnel.docker_host} is closed: `kanoa-local tunnel {dep.name}` "
                      "(or any hand-off: env, session, connect) reopens it")
    from ..engine.tls import client_context

    ctx = client_context(dep.spec.tls)
    code, _ = _get(f"{root}/health", context=ctx) if lv.alive and not closed else (0, "")
    metrics = None
    if code == 200:
        mcode, text = _get(f"{root}/metrics", key=key, context=ctx)
        metrics = parse_metrics(text) if mcode == 200 else None
    served = None if metrics is None or metrics.prompt_tokens is None else (
        metrics.prompt_tokens + (metrics.generation_tokens or 0))
    word = lv.state if not lv.alive else ("running" if code == 200 or closed else "starting")
    stage = None
    if word == "starting":
        from ..engine.ready import last_stage

        rt = for_kind(dep.runtime)
        try:
            stage = last_stage(rt.logs(dep, tail=2000))
        except Exception:  # noqa: BLE001 - the stage is a courtesy; the state is the answer
            stage = None
        finally:
            rt.close()
    return StatusReport(cost_usd=served_cost(served, dep.cost_per_mtok), name=dep.name, state=word,  # type: ignore[arg-type]
                        reason=closed or lv.reason, stage=stage, healthy=code == 200, model=dep.model_id, base_url=dep.base_url,
                        runtime=dep.runtime, api_key_hint=(key[:6] + "…") if key else "(missing)",
                        uptime_s=round(time.time() - dep.created_at, 1) if lv.alive else None,
                        metrics=metrics, deployment=dep,
                        # NVML sees this machine's GPUs only
                        gpus=[] if is_remote(dep.docker_host) or dep.runtime in ("slurm", "k8s")
                        else gpu_use(dep.gpu_uuids, nvml))


def served_cost(tokens: float | None, usd_per_mtok: float) -> float | None:
    """The estimated cost of ``tokens`` (prompt + generated) at ``usd_per_mtok``."""
    return None if tokens is None else round(tokens / 1e6 * usd_per_mtok, 8)


def _record_or_log(name: str) -> Deployment | None:
    name = state.check_name(name)
    dep = state.find(name)
    if dep is None and not state.log_path(name).is_file():
        raise DeploymentNotFound(f"no log for {name!r}", remedy="`kanoa-local ps` lists deployments")
    return dep


def log_lines(name: str, tail: int | None = None) -> list[str]:
    """The engine's output: from where it runs (the container, the pod, the log file), or the
    log a failed start left behind. Secrets in it (keys, tokens) come back as ``***``."""
    dep = _record_or_log(name)
    if dep is None:
        from ..runtimes.process import read_tail

        return [redact(ln) for ln in read_tail(state.log_path(state.check_name(name)), tail)]
    rt = for_kind(dep.runtime)
    try:
        return [redact(ln) for ln in rt.logs(dep, tail)]
    finally:
        rt.close()


def follow_logs(name: str) -> Iterator[str]:
    """New lines of the engine's output as they come, until it stops (Ctrl-C ends it too);
    secrets redacted as in :func:`log_lines`."""
    dep = _record_or_log(name)
    if dep is None:
        from ..runtimes.process import follow_file

        yield from map(redact, follow_file(state.log_path(state.check_name(name)), lambda: False))
        return
    rt = for_kind(dep.runtime)
    try:
        yield from map(redact, rt.follow(dep))
    finally:
        rt.close()
