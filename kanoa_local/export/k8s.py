"""Kubernetes manifests: Secret (the API key → VLLM_API_KEY; rendered files reference it and
`up` applies it), ConfigMap (kanoa-local's key guard, mounted on the engine's path), PVC (the HF cache; ReadWriteMany
for several nodes), Deployment (one node) or LeaderWorkerSet (several: vLLM's native multi-node
flags from LWS's environment), Service (ClusterIP: reachable inside the cluster only).

GPU requests equal limits and are whole numbers (the API server refuses anything else; checked
here first by :func:`check_objects`), /dev/shm is a memory volume, and startup/readiness probes
on /health give a big model time to load.
"""

from __future__ import annotations

from typing import Any

from ..engine import guard
from ..engine.spec import DISTRIBUTED_EXPOSURE, CONTAINER_MODEL_DIR, WORKER_ENTRYPOINT, dns_label
from . import CONTAINER_HF, Artefact, ExportOptions, Layout, node_args, server_args
from ..errors import UsageError
from ..plan.fit import Candidate

GPU = "nvidia.com/gpu"
LWS_API = "leaderworkerset.x-k8s.io/v1"


def _labels(opts: ExportOptions, c: Candidate) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": f"kanoa-{opts.name}",
              "app.kubernetes.io/managed-by": "kanoa-local", "io.kanoa-local/deployment": opts.name,
              "io.kanoa-local/model": c.model_id}
    if opts.owner:
        labels["io.kanoa-local/owner"] = opts.owner
    return labels


def _meta(name: str, opts: ExportOptions, c: Candidate) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "labels": _labels(opts, c)}
    if opts.namespace:
        m["namespace"] = opts.namespace
    return m


def _container(c: Candidate, layout: Layout, opts: ExportOptions, role: str, secret: str) -> dict[str, Any]:
    s = c.settings
    assert s is not None
    args = server_args(c, opts.port, opts.model_dir)
    if layout.pipeline_parallel > 1:
        args += node_args(layout, 0 if role == "leader" else "$(LWS_WORKER_INDEX)", "$(LWS_LEADER_ADDRESS)")
        if role == "worker":
            args.append("--headless")
    ctr: dict[str, Any] = {
        "name": "vllm", "image": opts.image, "args": args,
        "env": [{"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": secret, "key": "api-key"}}},
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "hf-token",
                                                                    "optional": True}}}],
        "volumeMounts": [{"name": "hf-cache", "mountPath": CONTAINER_HF}, {"name": "shm", "mountPath": "/dev/shm"},
                         {"name": "guard", "mountPath": guard.CONTAINER_DIR, "readOnly": True}],
    }
    ctr["env"].append({"name": "PYTHONPATH", "value": guard.CONTAINER_DIR})
    if opts.model_dir:
        ctr["volumeMounts"].append({"name": "model", "mountPath": CONTAINER_MODEL_DIR, "readOnly": True})
        ctr["env"].append({"name": "HF_HUB_OFFLINE", "value": "1"})
    if role == "worker":
        ctr["command"] = list(WORKER_ENTRYPOINT)     # the image's may be the API server's
    if layout.pipeline_parallel > 1:
        # the address the other pods reach this one by (vLLM announces it)
        ctr["env"].append({"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    if c.device == "gpu":
        n = str(layout.gpus_per_node)
        ctr["resources"] = {"requests": {GPU: n}, "limits": {GPU: n}}
    else:
        ctr["env"].append({"name": "VLLM_CPU_KVCACHE_SPACE", "value": str(s.cpu_kv_cache_gib or 1)})
    if role != "worker":
        # protocol spelled out: server-side apply on older API servers needs the list key (1.20)
        ctr["ports"] = [{"name": "http", "containerPort": opts.port, "protocol": "TCP"}]
        probe = {"httpGet": {"path": "/health", "port": opts.port}, "periodSeconds": 10}
        ctr["startupProbe"] = {**probe, "failureThreshold": opts.startup_minutes * 6}
        ctr["readinessProbe"] = {**probe, "failureThreshold": 3}
        ctr["livenessProbe"] = {**probe, "failureThreshold": 6}
    return ctr


def _pod(c: Candidate, layout: Layout, opts: ExportOptions, role: str, secret: str, pvc: str,
         labels: dict[str, str], guard_map: str) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [{"name": "hf-cache", "persistentVolumeClaim": {"claimName": pvc}},
                                     {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                                     {"name": "guard", "configMap": {"name": guard_map}}]
    if opts.model_dir:          # the same path on every node: shared storage (NFS, a cluster FS)
        volumes.append({"name": "model", "hostPath": {"path": opts.model_dir, "type": "Directory"}})
    return {"metadata": {"labels": labels},
            "spec": {"containers": [_container(c, layout, opts, role, secret)], "volumes": volumes}}


def objects(c: Candidate, layout: Layout, opts: ExportOptions, api_key: str | None = None,
            hf_token: str | None = None) -> list[dict[str, Any]]:
    """The objects; with ``api_key`` (what `up` applies, never a rendered file) the Secret too,
    holding ``hf_token`` as well when one is given (the pod downloads gated weights with it)."""
    name = dns_label(f"kanoa-{opts.name}")[:50]      # room for the -secrets / -hf-cache suffixes
    labels = _labels(opts, c)
    multi = layout.pipeline_parallel > 1
    secret: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(f"{name}-secrets", opts, c),
              "type": "Opaque", "stringData": {"api-key": api_key or "", **({"hf-token": hf_token} if hf_token else {})}}
    guard_map: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{name}-guard", opts, c),
                                 "data": {guard.FILE: guard.source()}}
    pvc_spec: dict[str, Any] = {"accessModes": ["ReadWriteMany" if multi else "ReadWriteOnce"],
                                "resources": {"requests": {"storage": opts.storage}}}
    if opts.storage_class:
        pvc_spec["storageClassName"] = opts.storage_class
    pvc: dict[str, Any] = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(f"{name}-hf-cache", opts, c),
           "spec": pvc_spec}
    sec, claim, gm = secret["metadata"]["name"], pvc["metadata"]["name"], guard_map["metadata"]["name"]
    if not multi:
        workload = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, opts, c),
                    "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                             "selector": {"matchLabels": {"io.kanoa-local/deployment": opts.name}},
                             "template": _pod(c, layout, opts, "single", sec, claim, labels, gm)}}
    else:
        workload = {"apiVersion": LWS_API, "kind": "LeaderWorkerSet", "metadata": _meta(name, opts, c),
                    "spec": {"replicas": 1, "leaderWorkerTemplate": {
                        "size": layout.pipeline_parallel,
                        "leaderTemplate": _pod(c, layout, opts, "leader", sec, claim, {**labels, "role": "leader"}, gm),
                        "workerTemplate": _pod(c, layout, opts, "worker", sec, claim, {**labels, "role": "worker"}, gm)}}}
    selector = {"io.kanoa-local/deployment": opts.name}
    if multi:
        selector["role"] = "leader"
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, opts, c),
               "spec": {"type": "ClusterIP", "selector": selector,
                        "ports": [{"name": "http", "port": opts.port, "targetPort": opts.port, "protocol": "TCP"}]}}
    # the key is applied by `up`; a rendered file only references the Secret (no key in a file)
    objs = ([secret] if api_key else []) + [guard_map, pvc, workload, service]
    check_objects(objs)
    return objs


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    pods = []
    if "template" in spec:
        pods.append(spec["template"])
    lwt = spec.get("leaderWorkerTemplate", {})
    pods += [lwt[k] for k in ("leaderTemplate", "workerTemplate") if k in lwt]
    if obj.get("kind") == "Pod":
        pods.append(obj)
    return [ctr for p in pods for ctr in p.get("spec", {}).get("containers", [])]


def check_objects(objs: list[dict[str, Any]]) -> None:
    """What the API server would refuse or what would expose the server, said first: GPU
    requests must equal limits and be whole numbers; the Service stays inside the cluster."""
    for obj in objs:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        for ctr in _containers(obj):
            res = ctr.get("resources", {})
            req, lim = res.get("requests", {}).get(GPU), res.get("limits", {}).get(GPU)
            for label, v in (("request", req), ("limit", lim)):
                if v is not None and not str(v).isdigit():
                    raise UsageError(f"{where}: {GPU} {label} {v!r} is not a whole number of GPUs",
                                     remedy="GPUs are whole: vLLM takes whole devices (use MIG profiles for slices)")
            if req is not None and lim is not None and str(req) != str(lim):
                raise UsageError(f"{where}: {GPU} request {req} and limit {lim} differ",
                                 remedy="Kubernetes needs GPU requests equal to limits")
            if req is not None and lim is None:
                raise UsageError(f"{where}: {GPU} requested without a limit", remedy="set the limit equal to it")
        if obj.get("kind") == "Service" and obj.get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
            raise UsageError(f"{where}: a {obj['spec']['type']} Service exposes the server outside the cluster",
                             remedy="keep ClusterIP and reach it with `kubectl port-forward` or an Ingress with auth")


def render(c: Candidate, layout: Layout, opts: ExportOptions) -> list[Artefact]:
    """The manifests as one file, referencing a Secret the user creates (no key in a file)."""
    import yaml

    objs = objects(c, layout, opts)
    secret = dns_label(f"kanoa-{opts.name}")[:50] + "-secrets"
    ns = f" -n {opts.namespace}" if opts.namespace else ""
    head = ("# Rendered by kanoa-local from its plan. The API key is not in this file: create the Secret\n"
            f"# it references first, e.g.  kubectl{ns} create secret generic {secret} \\\n"
            "#     --from-literal=api-key=\"$VLLM_API_KEY\"   (and, for gated models, --from-literal=hf-token=...)\n"
            "# Every route but /health needs that key (kanoa-local's guard, from the ConfigMap); the\n"
            "# Service is ClusterIP: add a NetworkPolicy if other tenants share the cluster network.\n")
    if layout.pipeline_parallel > 1:
        head += "# Needs the LeaderWorkerSet controller (leaderworkerset.x-k8s.io).\n"
        head += "# Note: " + DISTRIBUTED_EXPOSURE.replace("node network", "pod network") + ".\n"
    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:   # the guard's source, readable
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)

    Dumper.add_representer(str, text)
    return [Artefact(name=f"kanoa-{opts.name}.yaml",
                     content=head + yaml.dump_all(objs, Dumper=Dumper, sort_keys=False, width=1000))]
