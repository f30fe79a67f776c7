"""Diagnosis of a failed engine start, on real log excerpts kept in tests/logs/ (each file names
its source: this project's machines, or the public thread it was copied from)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kanoa_local.engine.diagnose import diagnose

LOGS = Path(__file__).parent / "logs"

CASES = [
    # file, kind, what the one-line cause or remedy must say
    ("gpu-runtime-missing.docker.txt", "gpu-runtime-missing", "NVIDIA Container Toolkit"),
    ("driver-too-old.txt", "driver-too-old", "CUDA 12.8"),
    ("gpu-memory-busy.txt", "gpu-memory-busy", "--gpu-memory-utilization"),
    ("max-model-len-too-large.cpu.txt", "max-model-len-too-large", "--max-model-len 43520"),
    ("max-model-len-too-large.v0.txt", "max-model-len-too-large", "--max-model-len 24320"),
    ("no-kv-memory.txt", "no-kv-memory", "smaller quantization"),
    ("quantization-unsupported.txt", "quantization-unsupported", "compute capability 8.0"),
    ("model-removed.txt", "model-removed", "0.10.2"),
    ("trust-remote-code.txt", "trust-remote-code", "--trust-remote-code"),
    ("gated-no-token.txt", "gated-no-token", "HF_TOKEN"),
    ("cuda-oom.txt", "cuda-oom", "--gpu-memory-utilization"),
    ("sigill.cpu.txt", "sigill", "float32"),
    ("unsupported-head-dim.cpu.txt", "unsupported-head-dim", "head_dim 16"),
    ("port-in-use.txt", "port-in-use", "--port"),
    ("port-in-use.v032-shared-bind.txt", "port-in-use", "--port"),
    ("cuda-driver-mismatch.txt", "cuda-driver-mismatch", "device requests"),
    ("gpu-lost.txt", "gpu-lost", "Xid 79"),
    ("nccl-p2p.txt", "nccl-p2p", "NCCL_P2P_DISABLE=1"),
    ("nccl-p2p.custom-allreduce.txt", "nccl-p2p", "NCCL_P2P_DISABLE=1"),
    ("kernel-unsupported.sm120.txt", "kernel-unsupported", "compute capability 12.0"),
    ("kernel-unsupported.turing.txt", "kernel-unsupported", "compute capability 7.5"),
    ("corrupt-weights.txt", "corrupt-weights", "HeaderTooLarge"),
    ("corrupt-weights.new-spelling.txt", "corrupt-weights", "header too large"),
    ("bind-address.docker.txt", "bind-address", "--host ADDR"),
]


def test_every_fixture_is_covered():
    assert {c[0] for c in CASES} == {p.name for p in LOGS.glob("*.txt")}


@pytest.mark.parametrize("case_name,kind,says", CASES, ids=[c[0] for c in CASES])
def test_diagnosis(case_name, kind, says):
    d = diagnose((LOGS / case_name).read_text())
    assert d.kind == kind, d
    assert says in d.cause + " " + d.remedy
    assert d.evidence and "\n" not in d.cause and "\n" not in d.remedy


def test_retry_hints():
    d = diagnose((LOGS / "max-model-len-too-large.cpu.txt").read_text())
    assert d.retry_max_model_len == 43520
    d = diagnose((LOGS / "gpu-memory-busy.txt").read_text())
    assert d.retry_gpu_memory_utilization is None      # 0.49 of 79 GiB free: nothing to retry with


def test_container_state_and_unknown():
    assert diagnose("", oom_killed=True).kind == "host-oom"
    d = diagnose("INFO all fine\n", exit_code=0)
    assert d.kind == "unknown" and "exit code 0" in d.cause


def test_docker_start_errors_use_the_same_diagnosis():
    """What the daemon answers at container start (the toolkit's driver check) reads as one line."""
    import docker

    from kanoa_local.backends.docker_api import translate_errors
    from kanoa_local.errors import EngineError

    text = (LOGS / "driver-too-old.txt").read_text().splitlines()[-1]
    with pytest.raises(EngineError) as e:
        with translate_errors("vllm/vllm-openai:v0.33.0"):
            raise docker.errors.APIError(text)
    assert "too old" in str(e.value) and "CUDA 12.8" in str(e.value) and e.value.remedy
