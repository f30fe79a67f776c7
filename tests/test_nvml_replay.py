"""The NVML boundary on recorded answers: every failure mode of NVML becomes a fact or a note."""

from __future__ import annotations

import copy
import json

import pynvml
import pytest

from kanoa_local.probe import nvml, probe

BASE = {
    "kind": nvml.RECORDING_KIND, "version": 1,
    "system": {"nvmlSystemGetDriverVersion": "580.65.06", "nvmlSystemGetCudaDriverVersion": 13000,
               "nvmlSystemGetProcessName": {"4242": "python3"}},
    "devices": [{
        "nvmlDeviceGetIndex": 0, "nvmlDeviceGetName": "NVIDIA L4",
        "nvmlDeviceGetUUID": "GPU-11111111-2222-3333-4444-555555555555",
        "nvmlDeviceGetMemoryInfo": {"total": 24152899584, "free": 20000000000, "used": 4152899584},
        "nvmlDeviceGetCudaComputeCapability": [8, 9],
        "nvmlDeviceGetCurrPcieLinkGeneration": 1, "nvmlDeviceGetCurrPcieLinkWidth": 16,
        "nvmlDeviceGetMaxPcieLinkGeneration": 4, "nvmlDeviceGetMaxPcieLinkWidth": 16,
        "nvmlDeviceGetGpuMaxPcieLinkGeneration": 4, "nvmlDeviceGetMigMode": [0, 0],
        "nvmlDeviceGetComputeRunningProcesses": [{"pid": 4242, "usedGpuMemory": 3900000000}],
        "nvmlDeviceGetUtilizationRates": {"gpu": 3, "memory": 1},
    }],
}
HOST = {"ram_total": 32 * 1024**3, "ram_available": 30 * 1024**3, "cpu_count": 8}


def run(rec):
    return probe(nvml.Replay(rec), host=HOST, docker=False)


def test_replay_raises_pynvml_own_error_classes():
    rec = copy.deepcopy(BASE)
    rec["devices"][0]["nvmlDeviceGetUtilizationRates"] = {"nvml_error": "NVML_ERROR_NOT_SUPPORTED"}
    r = nvml.Replay(rec)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        r.nvmlDeviceGetUtilizationRates(r.nvmlDeviceGetHandleByIndex(0))


def test_full_reading_of_one_gpu():
    p = run(BASE)
    (g,) = p.gpus
    assert (g.name, g.compute_capability, g.cc_value) == ("NVIDIA L4", (8, 9), 89)
    assert (g.pcie.current_gen, g.pcie.max_gen, g.pcie.max_width) == (1, 4, 16)
    assert g.pcie.max_bandwidth_gbps == pytest.approx(31.5, abs=0.1)
    assert g.processes[0].name == "python3" and g.processes[0].used_memory == 3900000000
    assert p.driver_version == "580.65.06" and p.cuda_driver_text == "13.0"
    assert p.nvml_available and p.nvml_error is None


@pytest.mark.parametrize("case_name, code, words", [
    ("no driver installed", "NVML_ERROR_LIBRARY_NOT_FOUND", "no NVIDIA driver"),
    ("driver not loaded", "NVML_ERROR_DRIVER_NOT_LOADED", "not loaded"),
    ("no permission on /dev/nvidia*", "NVML_ERROR_NO_PERMISSION", "permission"),
    ("unknown init failure", "NVML_ERROR_UNKNOWN", "NVML_ERROR_UNKNOWN"),
])
def test_init_failure_is_a_valid_profile_with_the_reason(case_name, code, words):
    p = run({"kind": nvml.RECORDING_KIND, "init_error": code, "devices": []})
    assert p.gpus == [] and not p.nvml_available
    assert words in p.nvml_error


@pytest.mark.parametrize("case_name, call, error, field", [
    ("WSL2 utilisation", "nvmlDeviceGetUtilizationRates", "NVML_ERROR_NOT_SUPPORTED", "utilization"),
    ("WSL2 processes", "nvmlDeviceGetComputeRunningProcesses", "NVML_ERROR_NOT_SUPPORTED", "processes"),
    ("container without PCIe access", "nvmlDeviceGetMaxPcieLinkGeneration", "NVML_ERROR_NO_PERMISSION", "pcie.max_gen"),
    ("old driver lacks a call", "nvmlDeviceGetGpuMaxPcieLinkGeneration", "NVML_ERROR_FUNCTION_NOT_FOUND", "pcie.gpu_max_gen"),
    ("consumer GPU MIG", "nvmlDeviceGetMigMode", "NVML_ERROR_NOT_SUPPORTED", "mig_mode"),
])
def test_failed_call_leaves_field_empty_with_note(case_name, call, error, field):
    rec = copy.deepcopy(BASE)
    rec["devices"][0][call] = {"nvml_error": error}
    (g,) = run(rec).gpus
    assert any(n.field == field for n in g.notes), g.notes
    assert g.memory_total == 24152899584  # the rest is still read


def test_missing_call_in_recording_reads_as_not_supported():
    rec = copy.deepcopy(BASE)
    del rec["devices"][0]["nvmlDeviceGetCudaComputeCapability"]
    (g,) = run(rec).gpus
    assert g.compute_capability is None
    assert any(n.field == "compute_capability" for n in g.notes)


def test_mig_enabled_gpu_is_seen_as_its_slices():
    rec = copy.deepcopy(BASE)
    dev = rec["devices"][0]
    dev["nvmlDeviceGetMigMode"] = [1, 1]
    dev["mig_devices"] = [{"nvmlDeviceGetName": "NVIDIA A100 MIG 3g.20gb",
                           "nvmlDeviceGetUUID": "MIG-aaaa",
                           "nvmlDeviceGetMemoryInfo": {"total": 20937965568, "free": 20000000000, "used": 937965568}}]
    (s,) = run(rec).gpus
    assert s.is_mig_slice and s.uuid == "MIG-aaaa" and s.memory_total == 20937965568


def test_recording_round_trip_through_json():
    p1 = run(BASE)
    p2 = run(json.loads(json.dumps(BASE)))
    assert p1.model_dump() == p2.model_dump()


def test_record_keeps_pynvml_friendly_objects_as_dicts():
    """nvmlDeviceGetComputeRunningProcesses returns nvmlFriendlyObject, not ctypes structs:
    a recording must keep pid and memory so the replay names the process."""
    friendly = pynvml.nvmlFriendlyObject({"pid": 4242, "usedGpuMemory": 3900000000})
    assert nvml._plain([friendly]) == [{"pid": 4242, "usedGpuMemory": 3900000000}]


def test_record_then_replay_round_trip_of_a_replayed_machine():
    """record() run over a Replay yields a recording that replays to the same facts."""
    again = nvml.record(nvml.Replay(BASE))
    a = probe(nvml.Replay(BASE), host=HOST, docker=False)
    b = probe(nvml.Replay(again), host=HOST, docker=False)
    assert a.model_dump() == b.model_dump()
    assert b.gpus[0].processes[0].name == "python3"
