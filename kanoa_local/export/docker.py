"""`docker run` for each node: one container per node, the head first. Single node: the same
container `up` starts (port on 127.0.0.1). Several nodes: vLLM's native multi-node flags, host
networking (the ranks talk to each other directly), workers --headless."""

from __future__ import annotations

import shlex

from . import CONTAINER_HF, Artefact, ExportOptions, Layout, node_args, server_args
from ..engine import guard
from ..engine.spec import DISTRIBUTED_EXPOSURE, WORKER_ENTRYPOINT
from ..plan.fit import Candidate

HEADER = """#!/usr/bin/env bash
# {title}
# Rendered by kanoa-local from its plan; run each block on its node. The API key comes from
# the environment (never written here): export VLLM_API_KEY=... (`kanoa-local env` shows one).
set -euo pipefail
: "${{VLLM_API_KEY:?set VLLM_API_KEY first}}"
HF_CACHE="${{HF_HOME:-$HOME/.cache/huggingface}}"
# kanoa-local's key guard (vLLM --middleware): every route but /health needs the key. The
# container mounts it from this folder, on the machine whose Docker daemon runs it.
KANOA_GUARD_DIR="${{KANOA_GUARD_DIR:-$HOME/.cache/kanoa-local/guard}}"
{guard}"""


def _run_line(c: Candidate, layout: Layout, opts: ExportOptions, rank: int, head: str) -> str:
    s = c.settings
    assert s is not None
    multi = layout.pipeline_parallel > 1
    parts = ["docker", "run", "-d", "--name", f"kanoa-{opts.name}" + (f"-{rank}" if multi else ""),
             "--restart", "no"]
    if c.device == "gpu":
        parts += ["--gpus", "all" if multi else f'"device={",".join(str(i) for i in s.gpu_indices)}"',
                  "--ipc=host"]
    else:
        parts += ["--shm-size", "2g"]
    if multi:
        parts += ["--network", "host"]
    elif rank == 0:
        parts += ["-p", f"127.0.0.1:{opts.port}:{opts.port}"]
    parts += ["-v", '"$HF_CACHE:' + CONTAINER_HF + '"', "-v", f'"$KANOA_GUARD_DIR:{guard.CONTAINER_DIR}:ro"',
              "-e", f"PYTHONPATH={guard.CONTAINER_DIR}", "-e", "VLLM_API_KEY", "-e", "HF_TOKEN"]
    if c.device == "cpu" and s.cpu_kv_cache_gib:
        parts += ["-e", f"VLLM_CPU_KVCACHE_SPACE={s.cpu_kv_cache_gib}"]
    if multi and layout.hosts:
        parts += ["-e", f"VLLM_HOST_IP={layout.hosts[rank]}"]    # the address the others reach it by
    parts += ["--label", f"io.kanoa-local.deployment={opts.name}", "--label", f"io.kanoa-local.model={c.model_id}",
              "--label", f"io.kanoa-local.node-rank={rank}"]
    if multi and rank > 0:
        parts += ["--entrypoint", WORKER_ENTRYPOINT[0]]   # `vllm serve`: only it knows --headless
    parts.append(opts.image or "?")
    if multi and rank > 0:
        parts += WORKER_ENTRYPOINT[1:]
    args = server_args(c, opts.port) + node_args(layout, rank, head)
    if multi:
        # host networking: the API would listen on every address of the node; keep it on
        # loopback (reach it through an SSH tunnel, or change --host knowingly)
        args[args.index("--host") + 1] = "127.0.0.1"
    if multi and rank > 0:
        args.append("--headless")
    quoted = [p if p.startswith('"') else shlex.quote(p) for p in parts]
    return " ".join(quoted) + " \\\n  " + " ".join(_shell_word(a) for a in args)


def _shell_word(a: str) -> str:
    """Quote for the shell, except a lone ``$VAR`` that must expand."""
    if a.startswith("$") and a[1:].replace("_", "").isalnum():
        return f'"{a}"'
    return shlex.quote(a)


def render(c: Candidate, layout: Layout, opts: ExportOptions) -> list[Artefact]:
    n = layout.pipeline_parallel
    hosts = layout.hosts or [f"node{i}" for i in range(n)]
    head = hosts[0] if layout.hosts else "$HEAD_ADDR"
    title = (f"{c.model_name} on {n} nodes × {layout.gpus_per_node} GPUs (TP {layout.tensor_parallel}, PP {n})"
             if n > 1 else f"{c.model_name} on one machine")
    out = [HEADER.format(title=title, guard=guard.shell_writer('"$KANOA_GUARD_DIR"'))]
    if n > 1:
        out.append("# Note: " + DISTRIBUTED_EXPOSURE + ".\n")
    if n > 1 and not layout.hosts:
        out.append(': "${HEAD_ADDR:?set HEAD_ADDR to the address of the head node}"\n')
    for rank in range(n):
        where = f"node {rank} ({hosts[rank]})" + (", the head: serves the API" if rank == 0 and n > 1 else "")
        out.append(f"\n# --- {where}\n" + _run_line(c, layout, opts, rank, head) + "\n")
    return [Artefact(name="docker-run.sh", content="".join(out), mode=0o755)]
