"""A docker-compose file of the same single-node deployment (what kanoa-mlops users run)."""

from __future__ import annotations

from . import CONTAINER_HF, Artefact, ExportOptions, Layout, server_args
from ..engine import guard
from ..errors import UsageError
from ..plan.fit import Candidate


def render(c: Candidate, layout: Layout, opts: ExportOptions) -> list[Artefact]:
    import yaml

    if layout.pipeline_parallel > 1:
        raise UsageError("compose runs on one machine; this plan spans "
                         f"{layout.pipeline_parallel} nodes",
                         remedy="export docker (one container per node), slurm or k8s instead")
    s = c.settings
    assert s is not None
    service: dict = {
        "image": opts.image,
        "command": server_args(c, opts.port),
        "ports": [f"127.0.0.1:{opts.port}:{opts.port}"],
        "environment": {"VLLM_API_KEY": "${VLLM_API_KEY:?set VLLM_API_KEY}", "HF_TOKEN": "${HF_TOKEN:-}",
                        "PYTHONPATH": guard.CONTAINER_DIR},
        "volumes": [f"${{HF_HOME:-~/.cache/huggingface}}:{CONTAINER_HF}",
                    f"./{guard.FILE}:{guard.CONTAINER_DIR}/{guard.FILE}:ro"],
        "labels": {"io.kanoa-local.deployment": opts.name, "io.kanoa-local.model": c.model_id},
        "healthcheck": {"test": ["CMD-SHELL", f"python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{opts.port}/health')\""],
                        "interval": "30s", "timeout": "5s", "retries": 3,
                        "start_period": f"{opts.startup_minutes}m"},
        "restart": "unless-stopped",
    }
    if c.device == "gpu":
        service["ipc"] = "host"
        service["deploy"] = {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "device_ids": [str(i) for i in s.gpu_indices], "capabilities": ["gpu"]}]}}}
    else:
        service["shm_size"] = "2gb"
        if s.cpu_kv_cache_gib:
            service["environment"]["VLLM_CPU_KVCACHE_SPACE"] = str(s.cpu_kv_cache_gib)
    from ..engine.spec import dns_label

    # a compose project name takes lowercase letters, digits, dashes and underscores only
    doc = {"name": dns_label(f"kanoa-{opts.name}"), "services": {"vllm": service}}
    head = ("# Rendered by kanoa-local from its plan. VLLM_API_KEY comes from the environment or .env\n"
            "# (never written here); `docker compose up -d`, then kanoa-local's client or any OpenAI one.\n"
            f"# {guard.FILE}, beside this file, is kanoa-local's key guard: every route but /health needs\n"
            "# the key.\n")
    return [Artefact(name="compose.yaml", content=head + yaml.safe_dump(doc, sort_keys=False, width=1000)),
            Artefact(name=guard.FILE, content=guard.source())]
