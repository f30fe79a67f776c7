"""An sbatch script: `-N` nodes, `--gres=gpu:T` each, one srun task per node; the rank and the
head's address come from Slurm's environment. The engine runs from a Python environment with
vLLM (`KANOA_VLLM_PYTHON`, default `python3`) or, where Docker is absent, from the vLLM image
through Apptainer (`KANOA_APPTAINER_IMAGE`, a .sif built from it). The HF cache must be on
storage every node sees."""

from __future__ import annotations

import shlex

from . import Artefact, ExportOptions, Layout, server_args
from ..engine import guard
from ..engine.spec import DISTRIBUTED_EXPOSURE
from ..plan.fit import Candidate

TEMPLATE = """#!/usr/bin/env bash
#SBATCH --job-name=kanoa-{name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
{gres}#SBATCH --output=kanoa-{name}-%j.log
# {title}
# Rendered by kanoa-local from its plan. Submit with the API key in the environment:
#   VLLM_API_KEY=... sbatch --export=ALL {file}
# (the key is read from the environment, never written here). The head (node rank 0) serves
# the OpenAI API on port {port}; `squeue -j JOBID` / `scancel JOBID` as usual.
set -euo pipefail
: "${{VLLM_API_KEY:?set VLLM_API_KEY and submit with --export=ALL}}"
export HF_HOME="${{HF_HOME:-$HOME/.cache/huggingface}}"   # on shared storage for every node
{env}
# kanoa-local's key guard (vLLM --middleware): every route but /health needs the key. Written
# on the node that runs this script, which is the head (the only node serving HTTP).
KANOA_GUARD_DIR="$(mktemp -d)"
export KANOA_GUARD_DIR
trap 'rm -rf "$KANOA_GUARD_DIR"' EXIT
{guard}export PYTHONPATH="$KANOA_GUARD_DIR${{PYTHONPATH:+:$PYTHONPATH}}" PYTHONSAFEPATH=1
HEAD_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"
export HEAD_ADDR
echo "kanoa-local: job $SLURM_JOB_ID, head $HEAD_ADDR:{port}, {nodes} node(s)"

srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
  set -euo pipefail
  RANK="$SLURM_NODEID"
  ARGS=({args})
  SERVE=(-m vllm.entrypoints.openai.api_server)
  if [ {nodes} -gt 1 ]; then
    ARGS+=(--distributed-executor-backend mp --nnodes {nodes} --node-rank "$RANK" --master-addr "$HEAD_ADDR")
    # workers run the engine only; just `vllm serve` knows --headless
    [ "$RANK" -eq 0 ] || {{ ARGS+=(--headless); SERVE=(-m vllm.entrypoints.cli.main serve); }}
    # the address the other nodes reach this one by (its route toward the head), not one
    # inherited from the submitting machine: vLLM guesses it from a default route, which
    # compute nodes often lack (it then announces 0.0.0.0 and the ranks never meet)
    IP="$(python3 -c "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((socket.gethostbyname(sys.argv[1]), 9)); print(s.getsockname()[0])" "$HEAD_ADDR" 2>/dev/null || true)"
    [ -z "$IP" ] || export VLLM_HOST_IP="$IP"
  fi
  echo "kanoa-local: node $(hostname) rank $RANK CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-}}"
  if [ -n "${{KANOA_APPTAINER_IMAGE:-}}" ]; then
    exec apptainer exec --nv --bind "$HF_HOME:/root/.cache/huggingface" --bind "$KANOA_GUARD_DIR" "$KANOA_APPTAINER_IMAGE" \\
      python3 "${{SERVE[@]}}" "${{ARGS[@]}}"
  fi
  exec "${{KANOA_VLLM_PYTHON:-python3}}" "${{SERVE[@]}}" "${{ARGS[@]}}"
'
"""


def script(*, name: str, title: str, nodes: int, gpus_per_node: int, argv: list[str],
           env: dict[str, str], port: int, file_name: str) -> str:
    """The sbatch script for ``argv`` (vLLM's server arguments) on ``nodes`` nodes."""
    gres = f"#SBATCH --gres=gpu:{gpus_per_node}\n" if gpus_per_node else ""
    if nodes > 1:
        title += "\n# Note: " + DISTRIBUTED_EXPOSURE + "."
    # several nodes: whole nodes (vLLM wants every CPU of them); one node: the cluster's default
    exclusive = "#SBATCH --exclusive\n" if nodes > 1 else ""
    env_lines = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    # the arguments go inside a single-quoted bash -c program: quote them for that shell, and
    # make sure no single quote ends the program early
    args = " ".join(shlex.quote(a) for a in argv).replace("'", "'\"'\"'")
    return TEMPLATE.format(name=name, nodes=nodes, gres=gres + exclusive, title=title, port=port,
                           file=file_name, env=env_lines.rstrip("\n"), args=args,
                           guard=guard.shell_writer('"$KANOA_GUARD_DIR"'))


def engine_env(c: Candidate) -> dict[str, str]:
    s = c.settings
    assert s is not None
    env = {}
    if c.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(s.cpu_kv_cache_gib or 1)
    return env


def render(c: Candidate, layout: Layout, opts: ExportOptions) -> list[Artefact]:
    n = layout.pipeline_parallel
    gpus = layout.gpus_per_node if c.device == "gpu" else 0
    title = (f"{c.model_name}: {n} nodes × {gpus} GPUs (TP {layout.tensor_parallel}, PP {n})"
             if n > 1 else f"{c.model_name} on one node" + (f" with {gpus} GPU(s)" if gpus else " (CPU engine)"))
    file_name = f"kanoa-{opts.name}.sbatch"
    text = script(name=opts.name, title=title, nodes=n, gpus_per_node=gpus, argv=server_args(c, opts.port),
                  env=engine_env(c), port=opts.port, file_name=file_name)
    return [Artefact(name=file_name, content=text, mode=0o755)]
