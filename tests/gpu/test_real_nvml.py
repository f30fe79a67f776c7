"""On a machine with a real NVIDIA GPU and driver: the probe reads it, and a recording of it
plays back to the same facts. Skipped (with the reason) where NVML cannot initialise."""

from __future__ import annotations

import pytest

from kanoa_local.probe import from_recording, nvml, probe

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def real():
    reading = nvml.read()
    if not reading.available or not reading.gpus:
        pytest.skip(f"no usable NVML here: {reading.error or 'no GPU'}")
    return reading


def test_probe_reads_real_gpus(real):
    p = probe(docker=False)
    for g in p.gpus:
        assert g.memory_total > 0 and g.uuid.startswith(("GPU-", "MIG-"))
        assert g.compute_capability is not None and g.cc_value >= 30
    assert p.driver_version and p.cuda_driver_version


def test_recording_plays_back_to_the_same_facts(real):
    rec = nvml.record()
    played = from_recording({**rec, "host": {"ram_total": 1, "ram_available": 1}}, source="x")
    live = probe(docker=False)
    fields = ("name", "uuid", "memory_total", "compute_capability", "pcie")
    assert [[getattr(g, f) for f in fields] for g in played.gpus] == \
           [[getattr(g, f) for f in fields] for g in live.gpus]
