"""The deployments registry: atomic durable records with a schema version, a 0600 key, one lock
per name, a state dir that cannot take a record said before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from kanoa_local import state
from kanoa_local.catalog import load_catalog
from kanoa_local.engine.spec import launch_spec
from kanoa_local.errors import DeploymentNotFound, UsageError
from kanoa_local.plan import PlanRequest, plan
from kanoa_local.probe import load_preset
from tests.conftest import in_private_mount


def _dep(name="a"):
    c = plan(load_preset("l4"), load_catalog(user=False), PlanRequest(model="llama-3.1-8b")).chosen
    spec = launch_spec(c, deployment=name)
    key, path = state.new_api_key(name)
    place = state.ProcessPlace(pid=os.getpid(), started_at=0.0, launch_id="x", log_file="/dev/null")
    return state.Deployment(name=name, place=place, model_id=c.model_id, served_model_name=c.model_id,
                            host="127.0.0.1", port=8000, device="gpu", plan_hash=state.plan_hash(spec),
                            api_key_file=str(path), spec=spec), key


def test_key_is_private_and_round_trips():
    dep, key = _dep()
    assert os.stat(dep.api_key_file).st_mode & 0o777 == 0o600
    state.save(dep)
    again = state.load("a")
    assert state.read_api_key(again) == key and again.runtime == "process" and again.schema_version == state.SCHEMA_VERSION
    assert key.startswith("kl-") and len(key) > 30
    assert key not in state.record_path("a").read_text()


def test_damaged_file_is_skipped_and_named():
    dep, _ = _dep("good")
    state.save(dep)
    (state.deployments_dir() / "bad.json").write_text("{not json")
    deps, broken = state.list_all()
    assert [d.name for d in deps] == ["good"] and list(broken) == ["bad"] and "damaged" in broken["bad"]
    state.remove("good")
    with pytest.raises(DeploymentNotFound):
        state.load("good")


def test_a_schema_1_record_is_migrated_and_a_newer_one_refused_in_one_line():
    dep, _ = _dep("old")
    flat = json.loads(dep.model_dump_json())
    del flat["place"], flat["schema_version"]
    flat.pop("runtime", None)
    flat.update(runtime="docker", container_id="abc123", docker_host="tcp://10.0.0.2:2375",
                workers=[{"rank": 1, "docker_host": None, "address": "10.0.0.1", "container_id": "def456"}],
                pid=None, log_file=None, job_id=None, k8s_namespace=None, k8s_context=None, kubeconfig=None)
    state.deployments_dir().mkdir(parents=True, exist_ok=True)
    state.record_path("old").write_text(json.dumps(flat))
    got = state.load("old")
    assert got.runtime == "docker" and [n.container_id for n in got.place.nodes] == ["abc123", "def456"]
    assert got.docker_host == "tcp://10.0.0.2:2375" and got.base_url == "http://127.0.0.1:8000/v1"
    newer = json.loads(dep.model_dump_json())
    newer["schema_version"] = 9
    state.record_path("new").write_text(json.dumps(newer))
    with pytest.raises(state.RecordUnreadable, match="newer kanoa-local .*schema 9") as e:
        state.load("new")
    assert "damaged" not in e.value.message


def test_deeply_nested_record_is_damaged_not_an_internal_error():
    state.deployments_dir().mkdir(parents=True, exist_ok=True)
    state.record_path("deep").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(state.RecordUnreadable, match="damaged"):
        state.load("deep")


@pytest.mark.parametrize("name", ["", "a b", "../x", "-x", "x" * 64])
def test_bad_names(name):
    with pytest.raises(UsageError):
        state.check_name(name)


def test_ipv6_hosts_are_bracketed_in_urls():
    dep, _ = _dep("six")
    assert dep.model_copy(update={"host": "::1"}).base_url == "http://[::1]:8000/v1"
    assert dep.model_copy(update={"host": "::"}).base_url == "http://[::1]:8000/v1"


def test_one_name_one_lock_across_processes(tmp_path):
    """A second holder (another process) waits, then gets one line; a killed holder frees it."""
    code = ("import sys, time; from kanoa_local import state\n"
            "with state.lock('x'):\n    print('held', flush=True); time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert p.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(state.NameBusy, match="another kanoa-local"):
            with state.lock("x", wait=1):
                pass
        assert time.monotonic() - t0 >= 0.9
        with state.lock("y", wait=0):       # other names are free
            pass
    finally:
        p.kill()
        p.wait()
    with state.lock("x", wait=5):            # the kernel released the dead holder's lock
        pass


def test_whether_a_name_is_being_started_is_read_without_taking_its_lock():
    """`ps` tells a deployment another process is starting (its name's lock held, the record not yet
    written) from an orphan, by the kernel's lock table: reading it never turns that `up` away."""
    from kanoa_local.statefiles import lock_held

    code = ("import time; from kanoa_local import state\n"
            "with state.lock('starting'):\n    print('held', flush=True); time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert p.stdout.readline().strip() == "held"
        assert lock_held("starting") and lock_held("starting")      # asking twice takes nothing
        assert not lock_held("other") and not lock_held("never-locked")
    finally:
        p.kill()
        p.wait()
    assert not lock_held("starting")


CHECK = ("from kanoa_local import state\n"
         "try:\n    state.check_writable()\n    print('OK')\nexcept state.StateDirError as e:\n    print('ERR', e.message)\n")


def _check_on(tmp_path, setup: str) -> str:
    home = tmp_path / "h"
    r = in_private_mount(home / "state", setup, [sys.executable, "-c", CHECK], env={"KANOA_LOCAL_HOME": str(home)},
                         after="ls -A {d}/deployments 2>/dev/null | wc -l")
    return r.stdout + r.stderr


def test_read_only_state_dir_is_said_before_anything_starts(tmp_path):
    out = _check_on(tmp_path, "mount -o remount,ro {d}")
    assert "ERR kanoa-local cannot write its state in" in out and "not writable" in out, out


def test_full_disk_is_said_and_leaves_no_half_written_file(tmp_path):
    out = _check_on(tmp_path, "mkdir {d}/deployments && (dd if=/dev/zero of={d}/fill bs=4k 2>/dev/null; true)")
    assert "ERR kanoa-local cannot write its state in" in out and "the disk is full" in out, out
    assert out.strip().splitlines()[-1] == "0", out         # no temp file, no 0-byte record


def test_status_of_a_dead_gpu_deployment_shows_gpu_memory_from_nvml():
    """NVML played back from a recorded profile (the only fake): who holds GPU memory."""
    from kanoa_local import deploy
    from kanoa_local.probe import PRESET_DIR
    from kanoa_local.probe.nvml import Replay

    rec = json.loads((PRESET_DIR / "rtx5080-egpu.json").read_text())
    uuid = rec["devices"][0]["nvmlDeviceGetUUID"]
    dep, _ = _dep("g")
    dep = dep.model_copy(update={"gpu_uuids": [uuid]})
    state.save(dep)
    st = deploy.status("g", nvml=Replay(rec))
    # the recorded pid is this test process, but its start time is not the record's: not ours
    assert st.state == "dead" and not st.healthy
    [g] = st.gpus
    assert g.uuid == uuid and g.memory_used > 0
    assert all("pid" in p for p in g.processes)
