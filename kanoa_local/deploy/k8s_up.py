"""`up --target k8s`: the plan's manifests applied to the cluster (server-side dry run first),
scheduled, and — unless --no-wait — ready by the pods' own /health probes. The Service is
ClusterIP: reach it inside the cluster, or with `kubectl port-forward`."""

from __future__ import annotations

import time
from typing import Any, Callable

from .. import state
from ..engine.ready import StageEvent
from ..engine.spec import launch_spec
from ..errors import EngineStartError, KanoaError, UsageError
from ..plan.fit import Candidate
from ..runtimes import Pool, Unreachable, interruptible, interrupted_error, shielded
from ..state import Deployment, K8sPlace
from .lifecycle import UpResult
from .reconcile import clear_for_up


def up_k8s(c: Candidate, *, name: str | None, port: int = 8000, image: str | None = None,
           namespace: str | None = None, timeout: float = 1200, wait: bool = True, replace: bool = False,
           defaults: dict[str, Any] | None = None,
           on_stage: Callable[[StageEvent], None] | None = None,
           on_status: Callable[[str], None] | None = None, model_dir: str | None = None) -> UpResult:
    """Apply the plan's manifests to the cluster of $KUBECONFIG (server-side dry run first),
    wait until the scheduler has placed every pod (its own reason when it cannot), then, unless
    ``wait`` is off, until the pods are ready (vLLM's /health through their readiness probe).
    The Service is ClusterIP: reach it inside the cluster, or with `kubectl port-forward`."""
    import os

    from ..backends import kube_api as k8s
    from ..export import ExportOptions, check_layout, layout_for, require_hub_weights
    from ..export import k8s as render_k8s

    if c.settings is None:
        raise UsageError("this plan does not fit, so it cannot be started", remedy="`kanoa-local plan` shows what fits")
    if model_dir is None:
        require_hub_weights(c)          # else the directory is on the nodes (shared storage)
    name = state.check_name(name or c.model_id)
    state.check_writable()
    with interruptible(), state.lock(name, wait=timeout, on_wait=lambda: on_status and on_status(
            f"another kanoa-local is starting or stopping {name}: waiting for it")):
        kubeconfig = os.environ.get("KUBECONFIG") or None
        context, default_ns = k8s.current_context(kubeconfig)
        ns = namespace or default_ns
        with Pool() as pool:
            existing, _ = clear_for_up(name, pool, docker_hosts=[])
        if existing is not None and not replace:
            raise UsageError(f"deployment {name!r} already exists", remedy=f"add --replace, or `kanoa-local down {name}`")
        # the key file is written once the Secret holds the key: a refused apply leaves any
        # deployment of this name with the key it has
        key = state.make_api_key()
        image = image or c.settings.image
        owner = state.owner_id()
        opts = ExportOptions(name=name, port=port, image=image, namespace=ns, model_dir=model_dir,
                             owner=owner)
        layout = layout_for(c)
        check_layout(layout, image)
        from ..hub import hf_token

        objs = render_k8s.objects(c, layout, opts, api_key=key, hf_token=hf_token())
        svc = next(o for o in objs if o["kind"] == "Service")["metadata"]["name"]
        t0 = time.monotonic()

        def stage(text: str) -> None:
            if on_stage:
                on_stage(StageEvent(stage=text, at_s=round(time.monotonic() - t0, 1)))

        try:
            applied = k8s.apply(objs, namespace=ns, kubeconfig=kubeconfig, context=context,
                                gone_timeout=min(60.0, timeout), owner=owner)
        except BaseException as exc:   # apply removed what it had created
            if isinstance(exc, KeyboardInterrupt):
                raise interrupted_error(exc, "what was applied to the cluster is deleted") from None
            raise
        key_file = state.write_api_key(name, key)
        stage("applied " + ", ".join(applied))
        dep = Deployment(name=name, place=K8sPlace(namespace=ns, context=context, kubeconfig=kubeconfig, service=svc,
                                       owner=owner, uids=applied),
                         model_id=c.model_id, served_model_name=c.model_id,
                         host=f"{svc}.{ns}.svc", port=port, device=c.device, plan_hash=manifests_hash(objs),
                         api_key_file=str(key_file), vision=c.vision, max_model_len=c.settings.max_model_len,
                         spec=launch_spec(c, deployment=name, port=port, host="0.0.0.0", runtime="docker"),
                         **(defaults or {}))
        state.save(dep)
        try:
            placed = k8s.wait_scheduled(name, namespace=ns, timeout=timeout, kubeconfig=kubeconfig,
                                        context=context, on_stage=stage, owner=owner)
            stage("scheduled on " + ", ".join(sorted({p["node"] for p in placed})))
            notes = [f"inside the cluster: {dep.base_url}; from here: `kubectl -n {ns} port-forward svc/{svc} "
                     f"{port}:{port}`"]
            if wait:
                while time.monotonic() - t0 < timeout:
                    ps = k8s.pods(name, namespace=ns, kubeconfig=kubeconfig, context=context, owner=owner)
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
            with shielded():           # a second Ctrl-C must not cut the delete short
                try:
                    k8s.delete(name, namespace=ns, kubeconfig=kubeconfig, context=context, owner=owner)
                    state.remove(name)
                except KanoaError as gone_wrong:
                    raise Unreachable(f"{getattr(exc, 'message', None) or exc}; and what was applied could not be "
                                      f"deleted: {gone_wrong.message}",
                                      remedy=f"its record is kept: `kanoa-local down {name}` once the cluster answers") from exc
            if isinstance(exc, KeyboardInterrupt):
                raise interrupted_error(exc, "what was applied to the cluster is deleted") from None
            raise
        return UpResult(deployment=dep, base_url=dep.base_url, api_key_file=dep.api_key_file, notes=notes)



def manifests_hash(objs: list[dict[str, Any]]) -> str:
    import hashlib
    import json

    scrubbed = [o for o in objs if o.get("kind") != "Secret"]
    return hashlib.sha256(json.dumps(scrubbed, sort_keys=True).encode()).hexdigest()[:16]
