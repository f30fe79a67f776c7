"""One attempt of `up`: launch on a runtime, save the record, wait for a token; on anything
but ready, undo what was started — and forget the record only when all of it went."""

from __future__ import annotations

from typing import Any

from .. import state
from ..engine.ready import ReadyReport, first_token, wait_until_ready
from ..engine.spec import LaunchSpec
from ..engine.tls import client_context
from ..errors import EngineError
from ..plan.fit import Candidate
from ..runtimes import Cleanup, LaunchRequest, Runtime, Unreachable, interrupted_error
from ..state import Deployment
from .targets import Target


def attempt(rt: Runtime, cand: Candidate, spec: LaunchSpec, *, name: str, where: Target, port: int,
             python: str | None, timeout: float, stall: float, on_stage: Any,
             defaults: dict[str, Any]) -> tuple[Deployment | None, ReadyReport]:
    """Start once and wait; on anything but ready, what was started is removed again (every
    step tried, signals held off meanwhile) and the record with it."""
    s = cand.settings
    assert s is not None
    key, key_file = state.new_api_key(name)
    cleanup = Cleanup()
    req = LaunchRequest(name=name, spec=spec, key=key, python=python, timeout=timeout,
                        labels={"io.kanoa-local.plan-hash": state.plan_hash(spec), "io.kanoa-local.port": str(port),
                                "io.kanoa-local.listen": where.listen},
                        gpu_uuids=s.gpu_uuids or None, title=f"{cand.model_name} (kanoa-local up)",
                        nodes=s.pipeline_parallel_size, gpus_per_node=len(s.gpu_indices) if cand.device == "gpu" else 0)
    dep: Deployment | None = None

    def record(place: Any, listen: str) -> Deployment:
        return Deployment(name=name, place=place, model_id=cand.model_id, served_model_name=spec.served_model_name,
                          host=listen, port=port, device=cand.device, plan_hash=state.plan_hash(spec),
                          api_key_file=str(key_file), spec=spec, gpu_uuids=s.gpu_uuids, vision=cand.vision,
                          max_model_len=s.max_model_len, **defaults)

    try:
        # a place known before the launch returns (a queued Slurm job) is on record at once: a
        # killed `up` then leaves nothing that `ps` and `down` do not know
        launched = rt.launch(req, cleanup, on_placed=lambda place: state.save(record(place, where.listen)))
        dep = record(launched.place, launched.listen or where.listen)
        state.save(dep)
        base_url, ctx = dep.base_url, client_context(spec.tls)

        def probe() -> bool:
            ok, said = first_token(base_url, key, spec.served_model_name, context=ctx)
            if said.startswith("HTTP 401"):
                # this deployment's own server never refuses its key: another one holds the port
                # (two starts raced for it; vLLM binds before it loads and then waits silently)
                raise EngineError(f"another server answers on port {port} (it refused this deployment's key)",
                                  remedy="choose another --port, or `kanoa-local ps` to find it",
                                  details={"kind": "port-in-use"})
            return ok

        report = wait_until_ready(read_lines=launched.read_lines, alive=launched.alive, probe=probe,
                                  timeout=timeout, stall=stall if launched.log_readable else timeout + 1,
                                  on_stage=on_stage, exit_info=launched.exit_info)
    except KeyboardInterrupt as exc:
        failed = _undo(cleanup, name, dep)
        err = interrupted_error(exc, "the engine that was starting is stopped and removed"
                                if not failed else "could not remove " + "; ".join(failed) + " (its record is kept)")
        raise err from None
    except BaseException as exc:
        failed = _undo(cleanup, name, dep)
        if failed:
            raise Unreachable(f"{getattr(exc, 'message', None) or exc}; and could not remove " + "; ".join(failed),
                              remedy=f"its record is kept: `kanoa-local down {name}` once that answers") from exc
        raise
    if report.outcome != "ready":
        _keep_log(rt, dep, name)
        failed = _undo(cleanup, name, dep)
        if failed:
            raise Unreachable(f"the engine did not start ({report.outcome}) and could not be removed: "
                              + "; ".join(failed), remedy=f"its record is kept: `kanoa-local down {name}` once that answers")
    else:
        cleanup.dismiss()
    return dep, report


def _undo(cleanup: Cleanup, name: str, dep: Deployment | None) -> list[str]:
    """Remove what an attempt started; its record and key go only when all of it went (what
    could not be removed stays on record, so `down` can try again)."""
    failed = cleanup.run()
    if not failed:
        state.remove(name)
    elif dep is not None:
        state.save(dep)
    return failed


def _keep_log(rt: Runtime, dep: Deployment | None, name: str) -> None:
    """`logs NAME` still shows why a start failed once its containers are gone."""
    if dep is None or rt.kind != "docker":
        return
    try:
        lines = rt.logs(dep)
        if lines:
            state.write_atomic(state.log_path(name), "\n".join(lines) + "\n")
    except Exception:  # noqa: BLE001 - the error itself matters more than its log copy
        pass
