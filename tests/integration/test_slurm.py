"""Slurm on real daemons (scripts/slurm-cluster.sh): the rendered sbatch script submitted as
is, across two nodes; `up --target slurm` really starting the vLLM CPU server on a node and
reaching it from here; Slurm's refusal of a job that asks for more than a node has."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kanoa_local.deploy import PsReport, UpResult
from kanoa_local.errors import UsageError
from tests.conftest import free_port, http, run_cli

pytestmark = [pytest.mark.engine, pytest.mark.scaleout]


def wait_for_job(job_id: str, timeout: float = 120) -> None:
    from kanoa_local.backends import slurm_cli as sl

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sl.job(job_id)["state"] in sl.ACTIVE:
        time.sleep(1)
    assert sl.job(job_id)["state"] not in sl.ACTIVE, f"job {job_id} still there"


def test_rendered_multi_node_script_runs_one_rank_per_node(slurm_cluster, tmp_path):
    """The export, submitted with Slurm's own sbatch: a 2 nodes × 2 GPUs plan. The engine's
    interpreter is replaced by one that prints what it was given (no GPU engine here): the
    ranks, the GPUs Slurm gave each node and vLLM's multi-node flags come from the job's output."""
    from kanoa_local.backends import slurm_cli as sl

    r = run_cli("export", "slurm", "llama-3.1-70b", "--nodes", "2", "--gpus-per-node", "2", "--gpu", "l4",
                "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    script = Path(r.stdout.strip().splitlines()[-1])
    text = script.read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --gres=gpu:2" in text
    shared = Path(slurm_cluster["KANOA_SLURM_JOBS"])
    echo = shared / "print-args.sh"
    echo.write_text('#!/bin/sh\necho "ARGS node=$SLURMD_NODENAME rank=$SLURM_NODEID gpus=$CUDA_VISIBLE_DEVICES $*"\n')
    echo.chmod(0o755)
    log = shared / f"multi-{tmp_path.name}.log"
    job = sl.submit(script, log_file=log, env={"VLLM_API_KEY": "kl-test", "KANOA_VLLM_PYTHON": str(echo)},
                    job_name="kanoa-test-multi")
    wait_for_job(job)
    lines = sorted(ln for ln in log.read_text().splitlines() if ln.startswith("ARGS"))
    assert len(lines) == 2, log.read_text()
    for rank, (node, line) in enumerate(zip(("gpu1", "gpu2"), lines)):
        assert f"node={node} rank={rank} gpus=0,1" in line
        assert "--nnodes 2" in line and f"--node-rank {rank}" in line and "--tensor-parallel-size 2" in line
        assert "--pipeline-parallel-size 2" in line and "--master-addr gpu1" in line
        assert ("--headless" in line) == (rank == 1)
        # a worker runs `vllm serve` (the api_server module would ignore --headless)
        assert ("vllm.entrypoints.cli.main serve" in line) == (rank == 1)


def test_the_rendered_script_runs_a_real_engine_across_both_nodes(slurm_cluster, cpu_venv, tiny_model, tmp_path):
    """The sbatch script of a 2-node plan (the tiny model in two pipeline stages on the vLLM CPU
    engine), submitted as is: rank 0 on gpu1 serves the API, rank 1 on gpu2 runs headless, they
    meet over gloo across the two namespaces (each announcing its own address, no default route
    there) and the head answers from here."""
    from kanoa_local.deploy import plan_for_up
    from kanoa_local.engine.ready import first_token
    from kanoa_local.backends import slurm_cli as sl
    from kanoa_local.export import ExportOptions, render
    from kanoa_local.probe import load_preset

    c, _, _ = plan_for_up(load_preset("no-driver"), model_path=str(tiny_model), nodes=2, all_nodes=True)
    assert c.settings.pipeline_parallel_size == 2
    port = free_port()
    (art,) = render("slurm", c, ExportOptions(name="pp2", port=port), nodes=2)
    script = Path(slurm_cluster["KANOA_SLURM_JOBS"]) / f"pp2-{tmp_path.name}.sbatch"
    script.write_text(art.content)
    log = script.with_suffix(".log")
    job = sl.submit(script, log_file=log, env={"VLLM_API_KEY": "kl-pp2", "KANOA_VLLM_PYTHON": str(cpu_venv / "bin" / "python")},
                    job_name="kanoa-test-pp2")
    head = dict(kv.split("=") for kv in slurm_cluster["KANOA_SLURM_NODES"].split(","))["gpu1"]
    try:
        deadline, ok = time.monotonic() + 400, False
        while time.monotonic() < deadline and sl.job(job)["state"] in sl.ACTIVE and not ok:
            ok = first_token(f"http://{head}:{port}/v1", "kl-pp2", c.model_id, timeout=10)[0]
            time.sleep(3)
        text = log.read_text(errors="replace") if log.exists() else ""
        assert ok, text[-3000:]
        assert "PP rank 1" in text and "headless" in text.lower()
        # the script as rendered is closed by default too
        assert http("GET", f"http://{head}:{port}/metrics")[0] == 401
        assert http("GET", f"http://{head}:{port}/metrics", api_key="kl-pp2")[0] == 200
    finally:
        sl.cancel(job)
        wait_for_job(job)


def test_slurm_refuses_more_gpus_than_a_node_has_in_one_line(slurm_cluster, tmp_path):
    from kanoa_local.backends import slurm_cli as sl

    r = run_cli("export", "slurm", "llama-3.1-8b", "--gpus-per-node", "4", "--gpu", "t4", "--quant", "bf16",
                "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    script = Path(r.stdout.strip().splitlines()[-1])
    assert "--gres=gpu:" in script.read_text()
    text = script.read_text().replace("--gres=gpu:", "--gres=gpu:4#", 1)   # ask for all 4 on one node
    script.write_text(text)
    with pytest.raises(UsageError) as info:
        sl.submit(script, log_file=tmp_path / "x.log", env={"VLLM_API_KEY": "k"}, job_name="kanoa-too-big")
    assert "Slurm refused the job" in info.value.message and "\n" not in info.value.message


def test_up_on_slurm_serves_from_a_node_and_down_cancels(slurm_cluster, cpu_venv, tiny_model):
    port = free_port()
    r = run_cli("up", "--target", "slurm", "--model-path", str(tiny_model), "--python",
                str(cpu_venv / "bin" / "python"), "--name", "onslurm", "--port", str(port), "--json",
                "--timeout", "400", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    up = UpResult.model_validate_json(r.stdout)
    dep = up.deployment
    assert dep.runtime == "slurm" and dep.place.job_id
    node_addr = dict(kv.split("=") for kv in slurm_cluster["KANOA_SLURM_NODES"].split(","))
    assert dep.host in node_addr.values()                 # served from a compute node, reached from here
    from kanoa_local import connect

    chat = connect("onslurm").openai().chat.completions.create(
        model=dep.model, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert chat.usage.completion_tokens >= 1
    # the job wrote the guard and the engine loaded it: no route but health without the key
    from kanoa_local.state import read_api_key
    from tests.conftest import assert_closed_but_health

    assert_closed_but_health(up.base_url.removesuffix("/v1"), read_api_key(dep))
    ps = PsReport.model_validate_json(run_cli("ps", "--json").stdout)
    assert [(d.name, d.state, d.runtime) for d in ps.deployments] == [("onslurm", "running", "slurm")]
    assert run_cli("logs", "onslurm").stdout.strip()
    down = run_cli("down", "onslurm", "--json")
    assert down.returncode == 0 and json.loads(down.stdout)["removed"] == ["onslurm"]
    from kanoa_local.backends import slurm_cli as sl

    assert sl.job(dep.place.job_id)["state"] not in sl.ACTIVE


def test_a_queued_job_is_on_record_and_a_killed_up_leaves_nothing_unknown(slurm_cluster, cpu_venv, tiny_model):
    """While the job waits in the queue (both nodes drained), the deployment is already on
    record: `ps` lists it with its job, not as an orphan. `up` killed there (SIGKILL: no
    cleanup at all), `down NAME` cancels the job by its record."""
    import subprocess
    import sys

    from kanoa_local.backends import slurm_cli as sl
    from kanoa_local.state import load as load_record
    from tests.conftest import ROOT, cli_env

    nodes = "nodename=gpu1,gpu2"
    subprocess.run(["scontrol", "update", nodes, "state=drain", "reason=kanoa-local-test"], check=True,
                   capture_output=True)
    up = None
    try:
        up = subprocess.Popen([sys.executable, "-m", "kanoa_local", "up", "--target", "slurm", "--model-path",
                               str(tiny_model), "--python", str(cpu_venv / "bin" / "python"), "--name", "queued",
                               "--port", str(free_port())], cwd=ROOT, env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        row, deadline = None, time.monotonic() + 90
        while row is None and time.monotonic() < deadline:
            ps = PsReport.model_validate_json(run_cli("ps", "--json").stdout)
            row = next((d for d in ps.deployments if d.name == "queued"), None)
            time.sleep(1)
        assert row is not None and row.runtime == "slurm" and not row.orphan, ps
        job = load_record("queued").place.job_id
        assert sl.job(job)["state"] == "PENDING" and up.poll() is None
        up.kill()
        up.wait(30)
        assert sl.job(job)["state"] == "PENDING"             # nothing cleaned up: the job waits on
        down = run_cli("down", "queued", "--json")
        assert down.returncode == 0 and json.loads(down.stdout)["removed"] == ["queued"], down.stderr
        wait_for_job(job, timeout=60)
    finally:
        if up is not None and up.poll() is None:
            up.kill()
        subprocess.run(["scontrol", "update", nodes, "state=resume"], capture_output=True)


def test_a_stopped_controller_is_unknown_and_nothing_is_forgotten(slurm_cluster, tmp_path):
    """slurmctld stopped while a job runs: `ps`/`status` say unknown, `down` refuses and keeps
    the record (the job keeps running); once the controller is back, `down` cancels it."""
    import os
    import signal
    import subprocess

    from kanoa_local import state
    from kanoa_local.backends import slurm_cli as sl
    from kanoa_local.catalog import load_catalog
    from kanoa_local.engine.spec import launch_spec
    from kanoa_local.plan import PlanRequest, plan
    from kanoa_local.probe import load_preset
    from tests.conftest import SCRIPTS

    script = tmp_path / "sleep.sbatch"
    script.write_text("#!/bin/bash\nsleep 600\n")
    job = sl.submit(script, log_file=tmp_path / "sleep.log", env={}, job_name="kanoa-held")
    c = plan(load_preset("l4"), load_catalog(user=False), PlanRequest(model="llama-3.1-8b")).chosen
    spec = launch_spec(c, deployment="held", runtime="process")
    _, key_file = state.new_api_key("held")
    state.save(state.Deployment(name="held", place=state.SlurmPlace(job_id=job, log_file=str(tmp_path / "sleep.log")),
                                model_id=c.model_id, served_model_name=c.model_id, host="gpu1", port=8000,
                                device="gpu", plan_hash="x", api_key_file=str(key_file), spec=spec))
    pidfile = Path(slurm_cluster["SLURM_CONF"]).parent.parent / "slurmctld.pid"
    os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
    try:
        time.sleep(2)
        ps = PsReport.model_validate_json(run_cli("ps", "--json", timeout=200).stdout)
        assert [(d.name, d.state) for d in ps.deployments] == [("held", "unknown")]
        d = run_cli("down", "held", timeout=200)
        assert d.returncode == 6 and "kept" in d.stderr and "Traceback" not in d.stderr
        assert state.record_path("held").exists()
    finally:
        subprocess.run(["bash", str(SCRIPTS / "slurm-cluster.sh"), "start"], capture_output=True, timeout=300)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if sl.job(job)["state"] in sl.ACTIVE:
                break
        except sl.SchedulerUnavailable:
            pass
        time.sleep(1)
    assert sl.job(job)["state"] in sl.ACTIVE                 # it kept running meanwhile
    assert run_cli("down", "held", timeout=200).returncode == 0
    assert sl.job(job)["state"] not in sl.ACTIVE and not state.record_path("held").exists()
