"""Kubernetes through its official Python client (`kubernetes`, extra kanoa-local[k8s]): the
only module that imports it. Objects are applied with a server-side dry run first (the API
server's own validation, nothing stored), then created or replaced; everything kanoa-local
creates carries its labels and is deleted by them. Errors become one-line kanoa-local errors."""

from __future__ import annotations

import re
import time
from typing import Any, Callable

from ..errors import ConfigError, EngineError, EngineStartError, UsageError

LABEL = "io.kanoa-local/deployment"
#: who applied it (user, machine, state dir): another user's objects of the same name are not ours
OWNER_LABEL = "io.kanoa-local/owner"


def selector(name: str, owner: str | None = None) -> str:
    return f"{LABEL}={name}" + (f",{OWNER_LABEL}={owner}" if owner else "")
LWS = ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")
#: scheduler reasons that no waiting will change (resources no node has)
FINAL_REASONS = re.compile(r"^\d+ (Insufficient |Too many pods)")


def is_final(message: str) -> bool:
    """Whether the scheduler's "0/N nodes are available: a Insufficient x, b ..." rules out every
    node for good (each reason is missing resources), rather than for now (a volume not bound
    yet, a node not ready)."""
    m = re.search(r"nodes are available: (.*?)(?:\.\s|\.$|$)", message)
    if not m:
        return False
    reasons = [r.strip() for r in m.group(1).split(",") if r.strip()]
    return bool(reasons) and all(FINAL_REASONS.search(r) for r in reasons)


def _kube() -> Any:
    """The kubernetes package, or one line saying how to get it (kanoa-local[k8s])."""
    try:
        import kubernetes
        import kubernetes.client.rest
        import kubernetes.watch
    except ImportError as exc:
        raise ConfigError("the Kubernetes target needs the kubernetes client",
                          remedy="pip install 'kanoa-local[k8s]'") from exc
    return kubernetes


def _client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    kubernetes = _kube()
    try:
        api = kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context)
        if not api.configuration.verify_ssl:   # the kubeconfig says so (as kubectl, no warning per call)
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        return api
    except (kubernetes.config.ConfigException, OSError, TypeError) as exc:
        raise ConfigError(f"no usable kubeconfig: {str(exc).splitlines()[0][:200]}",
                          remedy="set KUBECONFIG (or ~/.kube/config) to the cluster's config") from exc


def current_context(kubeconfig: str | None = None) -> tuple[str | None, str]:
    """(context name, its namespace or 'default')."""
    kubernetes = _kube()

    try:
        _, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
    except Exception:  # noqa: BLE001 - no contexts: the client call will say why
        return None, "default"
    return active.get("name"), (active.get("context") or {}).get("namespace") or "default"


def _api_error(exc: Any, what: str) -> Exception:
    import json

    body = getattr(exc, "body", None) or ""
    try:
        message = json.loads(body).get("message") or body
    except (ValueError, AttributeError):
        message = body or str(exc)
    status = getattr(exc, "status", None)
    if status == 403:
        return EngineError(f"Kubernetes refused {what}: {message}", remedy="ask for rights in that namespace")
    if status in (400, 422):
        return UsageError(f"the API server rejected {what}: {message}", remedy="see `kanoa-local export k8s`")
    return EngineError(f"Kubernetes: {what} failed ({status}): {message}"[:400],
                       remedy="check the cluster (`kubectl get --raw /readyz`)")


class ApiUnreachable(EngineError):
    """The API server did not answer: what runs there is unknown."""


def _call(fn: Callable[..., Any], what: str, *args: Any, _raw: tuple[int, ...] = (), **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the client's errors made one-line kanoa-local errors (a 409
    status in ``_raw`` is re-raised as is, for the caller to decide)."""
    import urllib3
    ApiException = _kube().client.rest.ApiException

    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        if exc.status in _raw:
            raise
        raise _api_error(exc, what) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ApiUnreachable(f"cannot reach the Kubernetes API server: {str(exc).splitlines()[0][:200]}",
                          remedy="check KUBECONFIG and that the cluster answers") from None


FIELD_MANAGER = "kanoa-local"
APPLY = "application/apply-patch+yaml"


def _ops(api: Any, obj: dict[str, Any], ns: str) -> tuple[Callable, Callable, Callable]:
    """(server-side apply, delete, read) for ``obj``'s kind."""
    client = _kube().client

    kind = obj["kind"]
    core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
    typed = {"Secret": (core, "secret"), "ConfigMap": (core, "config_map"),
             "PersistentVolumeClaim": (core, "persistent_volume_claim"),
             "Service": (core, "service"), "Deployment": (apps, "deployment")}
    if kind in typed:
        group, suffix = typed[kind]
        patch = getattr(group, f"patch_namespaced_{suffix}")
        return (lambda name, ns_, body, **kw: patch(name, ns_, body, field_manager=FIELD_MANAGER, force=True,
                                                    _content_type=APPLY, **kw),
                getattr(group, f"delete_namespaced_{suffix}"), getattr(group, f"read_namespaced_{suffix}"))
    if kind == "LeaderWorkerSet":
        g, v, p = LWS
        return (lambda name, ns_, body, **kw: custom.patch_namespaced_custom_object(
                    g, v, ns_, p, name, body, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY, **kw),
                lambda name, ns_, **kw: custom.delete_namespaced_custom_object(g, v, ns_, p, name, **kw),
                lambda name, ns_: custom.get_namespaced_custom_object(g, v, ns_, p, name))
    raise UsageError(f"kanoa-local does not apply {kind} objects", remedy="apply it with kubectl")


def _metadata(obj: Any) -> dict[str, Any]:
    """An object's metadata as a dict, from a typed model or a custom object's plain dict."""
    return obj.get("metadata", {}) if isinstance(obj, dict) else obj.metadata.to_dict()


def _wait_gone(read: Callable, where: str, name: str, namespace: str, timeout: float) -> None:
    ApiException = _kube().client.rest.ApiException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            read(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise _api_error(exc, where) from None
        time.sleep(1)
    raise EngineError(f"{where} is still being deleted after {timeout:.0f} s (its pods are stopping)",
                      remedy=f"try again once `kubectl get {where.lower()} -n {namespace}` finds nothing, "
                             "or choose another --name")


def _current(read: Callable, where: str, name: str, namespace: str) -> dict[str, Any] | None:
    """The object's metadata as it is in the cluster, None when there is none."""
    ApiException = _kube().client.rest.ApiException

    try:
        return _metadata(_call(read, where, name, namespace, _raw=(404,)))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise _api_error(exc, where) from None


def apply(objs: list[dict[str, Any]], *, namespace: str, kubeconfig: str | None = None,
          context: str | None = None, gone_timeout: float = 60, owner: str | None = None) -> dict[str, str]:
    """Server-side apply (field manager kanoa-local): first a dry run of every object (the API
    server validates all before anything is stored), then the apply itself. An object of the
    name that kanoa-local did not make is refused; one still being deleted (a `down` under way)
    is waited for, up to ``gone_timeout`` s, then made anew. If an apply fails half-way, what
    this call created is deleted again. Returns 'Kind/name' -> uid of what was applied (the
    objects' identity: one deleted and made anew under the name has another)."""
    api = _client(kubeconfig, context)
    existed: dict[str, str | None] = {}     # 'Kind/name' -> uid of the object there before, or None
    for obj in objs:
        patch, _, read = _ops(api, obj, namespace)
        name = obj["metadata"]["name"]
        where = f"{obj['kind']}/{name}"
        meta = _current(read, where, name, namespace)
        if meta is not None:
            labels = meta.get("labels") or {}
            if labels.get("app.kubernetes.io/managed-by") != "kanoa-local":
                raise UsageError(f"{where} exists and kanoa-local did not create it",
                                 remedy="choose another --name or namespace")
            if owner and labels.get(OWNER_LABEL) not in (None, owner):
                raise UsageError(f"{where} belongs to another user's kanoa-local deployment",
                                 remedy="choose another --name or namespace")
            if meta.get("deletion_timestamp") or meta.get("deletionTimestamp"):
                # an apply now would be deleted with it: wait until it is gone, then make it anew
                _wait_gone(read, where, name, namespace, timeout=gone_timeout)
                meta = None
        existed[where] = str(meta.get("uid") or "") if meta is not None else None
        _call(patch, where, name, namespace, obj, dry_run="All")
    done: dict[str, str] = {}
    try:
        for obj in objs:
            patch, _, _ = _ops(api, obj, namespace)
            name = obj["metadata"]["name"]
            where = f"{obj['kind']}/{name}"
            before = existed[where]
            if obj["kind"] == "PersistentVolumeClaim" and before is not None:
                done[where] = before           # a bound claim's spec cannot change: keep the weights
                continue
            done[where] = str(_metadata(_call(patch, where, name, namespace, obj)).get("uid") or "")
    except BaseException:
        for obj in reversed(objs):         # a failure half-way: what this call created goes again
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            if where in done and existed[where] is None:
                try:
                    _ops(api, obj, namespace)[1](obj["metadata"]["name"], namespace, _preload_content=False)
                except Exception:  # noqa: BLE001 - best effort; the first error is the one to report
                    pass
        raise
    return done


def pods(name: str, *, namespace: str, kubeconfig: str | None = None, context: str | None = None,
         owner: str | None = None) -> list[dict[str, Any]]:
    """The deployment's pods: name, node, phase, and the scheduler's verdict."""
    client = _kube().client

    api = _client(kubeconfig, context)
    found = _call(client.CoreV1Api(api).list_namespaced_pod, "listing pods", namespace,
                  label_selector=selector(name, owner))
    out = []
    for p in found.items:
        cond = {c.type: c for c in (p.status.conditions or [])}
        sched = cond.get("PodScheduled")
        ready = cond.get("Ready")
        out.append({"name": p.metadata.name, "node": p.spec.node_name, "phase": p.status.phase,
                    "scheduled": bool(sched and sched.status == "True"),
                    "unschedulable": (sched.message if sched and sched.reason == "Unschedulable" else None),
                    "ready": bool(ready and ready.status == "True"),
                    # deleted, waiting for its kubelet to stop it
                    "terminating": p.metadata.deletion_timestamp is not None})
    return out


def _pod_events(name: str, *, namespace: str, kubeconfig: str | None, context: str | None,
                owner: str | None = None) -> Callable[[float], None]:
    """A wait that returns as soon as one of the deployment's pods changes (the API server's
    watch), or after ``seconds``."""
    client, watch = _kube().client, _kube().watch

    core = client.CoreV1Api(_client(kubeconfig, context))

    def wait(seconds: float) -> None:
        w = watch.Watch()
        sel = selector(name, owner)
        try:
            # from the list's version on: only changes wake it (not the pods that are there)
            meta = core.list_namespaced_pod(namespace, label_selector=sel).metadata
            rv = meta.resource_version if meta is not None else None
            for _ in w.stream(core.list_namespaced_pod, namespace, label_selector=sel, resource_version=rv,
                              timeout_seconds=max(1, int(seconds)), _request_timeout=seconds + 5):
                break                      # something changed: look again
        except Exception:  # noqa: BLE001 - a dropped watch is only a shorter wait
            time.sleep(1)
        finally:
            w.stop()
    return wait


def wait_scheduled(name: str, *, namespace: str, timeout: float, kubeconfig: str | None = None,
                   context: str | None = None, on_stage: Callable[[str], None] | None = None,
                   owner: str | None = None) -> list[dict[str, Any]]:
    """Until every pod has a node; the scheduler's own reason when it cannot place one."""
    t0 = time.monotonic()
    said = last = ""
    wake = _pod_events(name, namespace=namespace, kubeconfig=kubeconfig, context=context, owner=owner)
    while time.monotonic() - t0 < timeout:
        ps = pods(name, namespace=namespace, kubeconfig=kubeconfig, context=context, owner=owner)
        ps = [p for p in ps if not p["terminating"]]
        bad = next((p for p in ps if p["unschedulable"]), None)
        if bad is not None:
            last = bad["unschedulable"]
            # no node can ever have what it asks for: say so now; anything else (a volume not
            # bound yet, a node still joining) may pass, so keep waiting
            if is_final(last):
                raise EngineStartError(f"Kubernetes cannot schedule {bad['name']}: {last}",
                                       remedy="the cluster lacks the GPUs this plan asks for: plan for its "
                                              "nodes (--gpus-per-node, --gpu) or free some")
        elif ps and all(p["scheduled"] for p in ps):
            return ps
        msg = (f"waiting: {last}" if bad is not None else "waiting for the scheduler") if ps else "waiting for pods"
        if msg != said and on_stage:
            on_stage(msg)
            said = msg
        wake(max(1.0, min(10.0, timeout - (time.monotonic() - t0))))
    raise EngineStartError(f"no pod of {name} was scheduled within {timeout:.0f} s" + (f": {last}" if last else ""),
                           remedy="see `kubectl get pods,events`")


def delete(name: str, *, namespace: str, kubeconfig: str | None = None, context: str | None = None,
           owner: str | None = None) -> list[str]:
    """Delete everything labelled for deployment ``name``; what was deleted."""
    client = _kube().client
    ApiException = _kube().client.rest.ApiException

    api = _client(kubeconfig, context)
    core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
    sel = selector(name, owner)
    gone: list[str] = []
    listings = [("Deployment", apps.list_namespaced_deployment, apps.delete_namespaced_deployment),
                ("Service", core.list_namespaced_service, core.delete_namespaced_service),
                ("Secret", core.list_namespaced_secret, core.delete_namespaced_secret),
                ("ConfigMap", core.list_namespaced_config_map, core.delete_namespaced_config_map),
                ("PersistentVolumeClaim", core.list_namespaced_persistent_volume_claim,
                 core.delete_namespaced_persistent_volume_claim)]
    for kind, lister, deleter in listings:
        for item in _call(lister, f"listing {kind}s", namespace, label_selector=sel).items:
            # no decoding of the answer: servers differ in what a delete returns (Status or object)
            _call(deleter, f"deleting {kind}/{item.metadata.name}", item.metadata.name, namespace,
                  propagation_policy="Foreground" if kind == "Deployment" else None, _preload_content=False)
            gone.append(f"{kind}/{item.metadata.name}")
    g, v, p = LWS
    try:
        found: Any = custom.list_namespaced_custom_object(g, v, namespace, p, label_selector=sel)
        for item in found.get("items", []):
            custom.delete_namespaced_custom_object(g, v, namespace, p, item["metadata"]["name"])
            gone.append(f"LeaderWorkerSet/{item['metadata']['name']}")
    except ApiException:
        pass                               # no LeaderWorkerSet API on this cluster
    # pods go with their Deployment (their kubelets stop them); wait until all are on their way
    for _ in range(20):
        if all(p["terminating"] for p in pods(name, namespace=namespace, kubeconfig=kubeconfig, context=context, owner=owner)):
            break
        time.sleep(0.5)
    return gone


def state(name: str, *, namespace: str, kubeconfig: str | None = None, context: str | None = None,
          owner: str | None = None, uids: dict[str, str] | None = None) -> str:
    """'alive' while a Deployment (or pod) of ``name`` is there and not on its way out, else
    'dead'; 'replaced' when ``uids`` ('Kind/name' -> uid, what `up` created) names the
    Deployment and the one there now has another uid: it was deleted and made anew since. An
    API server that does not answer raises :class:`ApiUnreachable`."""
    client = _kube().client

    api = _client(kubeconfig, context)
    sel = selector(name, owner)
    deps = _call(client.AppsV1Api(api).list_namespaced_deployment, "listing", namespace, label_selector=sel).items
    known = {k: v for k, v in (uids or {}).items() if v}
    if known and deps and all(known.get(f"Deployment/{d.metadata.name}") not in (None, d.metadata.uid) for d in deps):
        return "replaced"
    if any(d.metadata.deletion_timestamp is None for d in deps):
        return "alive"
    live = [p for p in pods(name, namespace=namespace, kubeconfig=kubeconfig, context=context, owner=owner) if not p["terminating"]]
    return "alive" if live else "dead"


def exists(name: str, *, namespace: str, kubeconfig: str | None = None, context: str | None = None) -> bool:
    """Whether ``name`` is there (an unreachable API server raises, it is not "no")."""
    return state(name, namespace=namespace, kubeconfig=kubeconfig, context=context) == "alive"


def pod_logs(name: str, *, namespace: str, tail: int | None = None, follow: bool = False,
             kubeconfig: str | None = None, context: str | None = None, owner: str | None = None) -> Any:
    """The engine's output of the deployment's first pod: its text, or with ``follow`` an
    iterator of new lines (the kubelet's log stream)."""
    client = _kube().client

    api = _client(kubeconfig, context)
    ps = sorted(pods(name, namespace=namespace, kubeconfig=kubeconfig, context=context, owner=owner),
                key=lambda p: (p["terminating"], p["name"]))
    if not ps:
        return iter(()) if follow else ""
    core = client.CoreV1Api(api)
    if not follow:
        return _call(core.read_namespaced_pod_log, f"reading the log of {ps[0]['name']}", ps[0]["name"],
                     namespace, tail_lines=tail)
    resp = _call(core.read_namespaced_pod_log, f"following the log of {ps[0]['name']}", ps[0]["name"],
                 namespace, follow=True, since_seconds=1, _preload_content=False)

    from ..engine.lines import lines_of

    return lines_of(resp.stream())


def deployment_names(namespace: str, *, kubeconfig: str | None = None, context: str | None = None,
                     owner: str | None = None) -> list[str]:
    """The kanoa-local deployments (by label) in ``namespace``."""
    client = _kube().client

    api = _client(kubeconfig, context)
    deps = _call(client.AppsV1Api(api).list_namespaced_deployment, "listing", namespace,
                 label_selector=LABEL + (f",{OWNER_LABEL}={owner}" if owner else "")).items
    return sorted({d.metadata.labels.get(LABEL) for d in deps if d.metadata.labels and d.metadata.labels.get(LABEL)})
