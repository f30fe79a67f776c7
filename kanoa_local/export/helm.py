"""Values for vLLM's production-stack Helm chart (`helm install vllm vllm/vllm-stack -f
values.yaml`): the same plan as one servingEngineSpec.modelSpec entry. The API key and HF token
are references to a Secret, never values in the file."""

from __future__ import annotations

from . import Artefact, ExportOptions, Layout, server_args
from ..errors import UsageError
from ..plan.fit import Candidate

#: vLLM arguments the chart has its own fields for
MAPPED = {"--model", "--host", "--port", "--max-model-len", "--tensor-parallel-size",
          "--gpu-memory-utilization", "--dtype"}


def _extra_args(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        takes_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        if a in MAPPED:
            i += 2 if takes_value else 1
            continue
        out.append(a)
        if takes_value:
            out.append(argv[i + 1])
            i += 1
        i += 1
    return out


def render(c: Candidate, layout: Layout, opts: ExportOptions) -> list[Artefact]:
    import yaml

    from ..engine.spec import dns_label

    s = c.settings
    assert s is not None
    if layout.pipeline_parallel > 1:
        raise UsageError(f"the production-stack chart serves a model on one node; this plan spans "
                         f"{layout.pipeline_parallel}", remedy="export k8s (a LeaderWorkerSet) or slurm instead")
    if c.device != "gpu":
        raise UsageError("the production-stack chart is for GPU nodes", remedy="export k8s or compose for the CPU engine")
    repo, _, tag = (opts.image or "").rpartition(":")
    secret = dns_label(f"kanoa-{opts.name}")[:50] + "-secrets"
    config: dict = {"maxModelLen": s.max_model_len, "tensorParallelSize": s.tensor_parallel_size,
                    "gpuMemoryUtilization": s.gpu_memory_utilization}
    if s.dtype != "bfloat16":
        config["dtype"] = s.dtype
    # the chart has no way to put kanoa-local's guard on the engine's path
    extra = _extra_args(server_args(c, opts.port, guarded=False))
    if extra:
        config["extraArgs"] = extra
    spec = {"name": dns_label(opts.name), "repository": repo, "tag": tag,
            "modelURL": c.variant.repo, "replicaCount": 1, "requestGPU": layout.gpus_per_node,
            "pvcStorage": opts.storage, "vllmConfig": config,
            "hf_token": {"secretName": secret, "secretKey": "hf-token"}}
    if opts.storage_class:
        spec["storageClass"] = opts.storage_class
    values = {"servingEngineSpec": {"vllmApiKey": {"secretName": secret, "secretKey": "api-key"},
                                    "containerPort": opts.port, "modelSpec": [spec]}}
    head = (f"# vLLM production-stack values rendered by kanoa-local from its plan ({c.label}).\n"
            f"# Create the Secret first (the key never goes in this file):\n"
            f"#   kubectl create secret generic {secret} --from-literal=api-key=$VLLM_API_KEY \\\n"
            f"#     --from-literal=hf-token=$HF_TOKEN\n"
            f"#   helm install vllm vllm/vllm-stack -f values.yaml\n"
            f"# Not closed by default: the chart's engine checks the key on /v1 only (vLLM's own check);\n"
            f"# /metrics, /tokenize, /invocations and others answer anyone in the cluster network.\n"
            f"# Restrict it with a NetworkPolicy, or export k8s (kanoa-local's guard: only /health is open).\n")
    return [Artefact(name="values.yaml", content=head + yaml.safe_dump(values, sort_keys=False, width=1000))]
