"""Slurm through its official clients (sbatch, squeue, scontrol, scancel): the only module
that runs them. Errors become one-line kanoa-local errors; Slurm's own words are kept."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..errors import EngineError, UsageError

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
NO_SLURM = "no Slurm client here (sbatch is not on PATH)"


def _run(argv: list[str], timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise EngineError(NO_SLURM, remedy="run kanoa-local on a login node of the cluster, or install "
                                           "slurm-client and point SLURM_CONF at the cluster's slurm.conf")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **env} if env else None)
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"{argv[0]} did not answer in {timeout:.0f} s", remedy="is slurmctld up? (`sinfo`)") from exc


def _slurm_error(r: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
    text = lines[-1] if lines else f"exit code {r.returncode}"
    for prefix in ("sbatch: error: ", "squeue: error: ", "scontrol: error: ", "scancel: error: "):
        text = text.replace(prefix, "")
    return text


def submit(script: Path, *, log_file: Path, env: dict[str, str], job_name: str) -> str:
    """Submit ``script``; its job id. Slurm's refusal (e.g. more GPUs than a node has) is one line."""
    r = _run(["sbatch", "--parsable", "--job-name", job_name, "--output", str(log_file),
              "--export", "ALL", str(script)], timeout=60, env=env)
    if r.returncode != 0:
        why = _slurm_error(r)
        remedy = "ask for what the cluster's nodes have (`sinfo -o '%N %G %c %m'`)"
        if "node configuration is not available" in why or "Invalid generic resource" in why:
            remedy = "no node has that many GPUs/CPUs: plan for the cluster's nodes (--gpus-per-node, --nodes)"
        raise UsageError(f"Slurm refused the job: {why}", remedy=remedy)
    return r.stdout.strip().split(";")[0]



def job(job_id: str) -> dict[str, str]:
    """{state, nodes, reason}; state 'GONE' when Slurm no longer lists it."""
    r = _run(["squeue", "-h", "-j", job_id, "-o", "%T|%N|%r"])
    line = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else ""
    if not line:
        return {"state": "GONE", "nodes": "", "reason": ""}
    state, nodes, reason = (line.split("|") + ["", ""])[:3]
    return {"state": state, "nodes": nodes, "reason": reason}


def head_address(nodelist: str) -> str:
    """The address of the first node of ``nodelist`` (its NodeAddr, else its name)."""
    r = _run(["scontrol", "show", "hostnames", nodelist])
    names = r.stdout.split()
    if not names:
        raise EngineError(f"Slurm gave no node for the job ({nodelist!r})", remedy="see `squeue`")
    r = _run(["scontrol", "show", "node", names[0], "-o"])
    for field in r.stdout.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return names[0]


def cancel(job_id: str, wait: float = 30) -> bool:
    """scancel, then wait until the job is gone; False when it was not there."""
    import time

    if job(job_id)["state"] == "GONE":
        return False
    _run(["scancel", job_id])
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and job(job_id)["state"] != "GONE":
        time.sleep(1)
    return True
