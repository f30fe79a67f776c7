"""Slurm through its official clients (sbatch, squeue, scontrol, scancel): the only module
that runs them. Errors become one-line kanoa-local errors; Slurm's own words are kept."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..errors import EngineError, UsageError

#: job states in which it holds (or will hold) nodes: not to be read as gone
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "STOPPED",
          "SIGNALING", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "STAGE_OUT", "SPECIAL_EXIT"}
NO_SLURM = "no Slurm client here (sbatch is not on PATH)"


def _run(argv: list[str], timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise EngineError(NO_SLURM, remedy="run kanoa-local on a login node of the cluster, or install "
                                           "slurm-client and point SLURM_CONF at the cluster's slurm.conf")
    # the user's SQUEUE_* defaults (a partition, states, a format) must not hide a job from us
    base = {k: v for k, v in os.environ.items() if not k.startswith("SQUEUE_")}
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**base, **(env or {})})
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"{argv[0]} did not answer in {timeout:.0f} s", remedy="is slurmctld up? (`sinfo`)") from exc


def _slurm_error(r: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
    text = lines[-1] if lines else f"exit code {r.returncode}"
    for prefix in ("sbatch: error: ", "squeue: error: ", "scontrol: error: ", "scancel: error: "):
        text = text.replace(prefix, "")
    return text


class SchedulerUnavailable(EngineError):
    """slurmctld did not answer: a job's state is unknown (never "gone")."""


def submit(script: Path, *, log_file: Path, env: dict[str, str], job_name: str, comment: str = "") -> str:
    """Submit ``script``; its job id. Slurm's refusal (e.g. more GPUs than a node has) is one line."""
    r = _run(["sbatch", "--parsable", "--job-name", job_name, "--output", str(log_file),
              *(["--comment", comment] if comment else []), "--export", "ALL", str(script)], timeout=60, env=env)
    if r.returncode != 0:
        why = _slurm_error(r)
        remedy = "ask for what the cluster's nodes have (`sinfo -o '%N %G %c %m'`)"
        if "node configuration is not available" in why or "Invalid generic resource" in why:
            remedy = "no node has that many GPUs/CPUs: plan for the cluster's nodes (--gpus-per-node, --nodes)"
        raise UsageError(f"Slurm refused the job: {why}", remedy=remedy)
    return r.stdout.strip().split(";")[0]



#: squeue's answer for a job id the controller no longer knows: that job is gone, not unknown
GONE_MARKS = ("Invalid job id",)


def _unavailable(r: subprocess.CompletedProcess, what: str) -> SchedulerUnavailable:
    return SchedulerUnavailable(f"Slurm did not answer {what}: {_slurm_error(r)}",
                                remedy="is slurmctld up? (`sinfo`); nothing was changed or forgotten")


def job(job_id: str) -> dict[str, str]:
    """{state, nodes, reason}; state 'GONE' when Slurm says it no longer has it. A controller
    that does not answer raises :class:`SchedulerUnavailable` (the job may well still run)."""
    try:
        r = _run(["squeue", "-h", "-a", "--states=all", "-j", job_id, "-o", "%T|%N|%r|%j"])
    except EngineError as exc:
        if exc.message == NO_SLURM:
            raise
        raise SchedulerUnavailable(exc.message, remedy=exc.remedy) from exc
    if r.returncode != 0:
        if any(m in (r.stderr or "") + (r.stdout or "") for m in GONE_MARKS):
            return {"state": "GONE", "nodes": "", "reason": "", "name": ""}
        raise _unavailable(r, f"about job {job_id}")
    line = r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
    if not line:
        return {"state": "GONE", "nodes": "", "reason": "", "name": ""}
    state, nodes, reason, name = (line.split("|") + ["", "", ""])[:4]
    return {"state": state, "nodes": nodes, "reason": reason, "name": name}


def my_jobs(comment_prefix: str) -> list[dict[str, str]]:
    """This user's jobs whose comment starts with ``comment_prefix``: {id, name, state, comment}."""
    import getpass

    r = _run(["squeue", "-h", "-a", "-u", getpass.getuser(), "-o", "%i|%j|%T|%k"])
    if r.returncode != 0:
        raise _unavailable(r, "for the job list")
    out = []
    for line in r.stdout.splitlines():
        parts = (line.split("|") + ["", "", ""])[:4]
        if parts[3].startswith(comment_prefix):
            out.append({"id": parts[0], "name": parts[1], "state": parts[2], "comment": parts[3]})
    return out


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


def cancel(job_id: str, wait: float = 30, job_name: str | None = None) -> bool:
    """scancel, then wait until the job has ended; False when it was not running. With
    ``job_name``, a job of that id with another name (ids restart after a controller reset) is
    refused, never cancelled."""
    import time

    j = job(job_id)
    if j["state"] not in ACTIVE:
        return False
    if job_name and j.get("name") and j["name"] != job_name:
        return False                       # that id is someone else's job now: ours has ended
    r = _run(["scancel", job_id])
    if r.returncode != 0:
        raise _unavailable(r, f"to scancel {job_id}")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and job(job_id)["state"] in ACTIVE:
        time.sleep(1)
    return True
