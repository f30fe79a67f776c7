"""`check` on every recorded GPU profile: the verdicts a GPU-savvy user would agree with."""

from __future__ import annotations

import pytest

from kanoa_local.check import check
from kanoa_local.probe import load_preset, preset_names


def items(report):
    return {(i.id, i.gpu): i for i in report.items}


def status(report, item_id, gpu=0):
    it = items(report).get((item_id, gpu)) or items(report).get((item_id, None))
    return it.status if it else None


def test_every_preset_loads_and_checks():
    names = preset_names()
    assert len(names) >= 13
    for name in names:
        report = check(load_preset(name))
        assert report.exit_code in (0, 10, 11, 12), name
        assert report.summary


# case_name, profile, verdict, {item: status}
CASES = [
    ("eGPU RTX 5080 at PCIe 4.0 x4: ready, link flagged", "rtx5080-egpu", "gpu-ready",
     {"pcie": "warn", "vram": "pass", "compute-capability": "pass", "gpu-processes": "warn"}),
    ("L4 24 GB counts as the 24 GB tier", "l4", "gpu-ready", {"vram": "pass", "pcie": "pass", "driver": "pass"}),
    ("RTX 4090 on a CUDA 12.9 driver: older image", "rtx4090", "gpu-ready", {"driver": "warn"}),
    ("A100 80GB", "a100-80g", "gpu-ready", {"vram": "pass", "driver": "pass"}),
    ("H100", "h100", "gpu-ready", {"vram": "pass", "pcie": "pass"}),
    ("T4 cc 7.5 on CUDA 12.8", "t4", "gpu-ready", {"compute-capability": "pass", "driver": "warn"}),
    # Volta runs on the last images built for it (v0.19.1 and older; v0.6.6 for this CUDA 12.2 driver)
    ("V100 cc 7.0 and an old driver", "v100", "gpu-ready", {"compute-capability": "warn", "driver": "warn"}),
    ("two RTX 4090", "2x-rtx4090", "gpu-ready", {"multi-gpu": "info"}),
    ("A100 MIG slice", "a100-mig", "gpu-ready", {"mig": "info"}),
    ("WSL2: max link unreadable", "wsl2-rtx4080", "gpu-ready", {"pcie": "info", "wsl": "info"}),
    ("driver too old for every image", "old-driver", "gpu-not-ready", {"driver": "fail"}),
    ("no driver at all", "no-driver", "cpu-only", {"gpu": "fail"}),
    ("Gen4 card trained at Gen2", "rtx3060-gen2", "gpu-ready", {"pcie": "warn", "vram": "warn"}),
    ("the lent H100 without Docker", "h100-lent", "gpu-not-ready", {"docker": "fail", "pcie": "pass"}),
]


@pytest.mark.parametrize("case_name, name, verdict, expect", CASES, ids=[c[0] for c in CASES])
def test_verdicts(case_name, name, verdict, expect):
    report = check(load_preset(name))
    got = {k: status(report, k) for k in expect}
    assert (report.verdict, got) == (verdict, expect), [(i.id, i.status, i.detail) for i in report.items]


def test_exit_codes_follow_the_verdict():
    assert check(load_preset("l4")).exit_code == 0
    assert check(load_preset("no-driver")).exit_code == 10
    assert check(load_preset("old-driver")).exit_code == 11


def test_idle_link_is_judged_on_its_max_and_says_so():
    report = check(load_preset("l4"))
    pcie = items(report)[("pcie", 0)]
    assert "4.0 x16 max" in pcie.detail and "idle" in pcie.detail


def test_egpu_note_and_processes_named():
    report = check(load_preset("rtx5080-egpu"))
    assert "eGPU" in items(report)[("pcie", 0)].detail
    assert items(report)[("gpu-processes", 0)].detail


def test_old_driver_gets_an_older_image_or_the_driver_to_install():
    r = items(check(load_preset("rtx4090")))[("driver", None)]
    assert "cu129" in r.detail
    r = items(check(load_preset("old-driver")))[("driver", None)]
    assert r.remedy and "update the NVIDIA driver" in r.remedy


def test_gpu_without_nvidia_runtime_is_not_ready():
    from kanoa_local.hardware import DockerFacts

    p = load_preset("l4").model_copy(update={"docker": DockerFacts(reachable=True, runtimes=["runc"])})
    report = check(p)
    assert report.verdict == "gpu-not-ready"
    it = items(report)[("nvidia-runtime", None)]
    assert it.status == "fail" and "could not select device driver" in it.detail
    assert "nvidia-ctk" in it.remedy
