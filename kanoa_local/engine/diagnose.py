"""Why did the engine not start? vLLM's log (and the container's state) → one cause, one remedy.

An ordered table of patterns, most specific first, each matched against the log text. The
patterns are vLLM's own messages (0.6-0.33), Docker's and the NVIDIA toolkit's; the tests keep
real excerpts of each as fixtures (tests/logs/). Pure: `up` feeds it the log tail and the
container state; nothing here reads files or talks to Docker.

Some causes carry a retry hint: "max-model-len too large" with the length vLLM says would fit,
"GPU memory in use" with the --gpu-memory-utilization that the free memory allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel, Field


class Diagnosis(BaseModel):
    kind: str = Field(description="a stable name for the cause, e.g. 'max-model-len-too-large'")
    cause: str
    remedy: str
    evidence: str | None = Field(None, description="the log line it was read from")
    retry_max_model_len: int | None = Field(None, description="vLLM's estimate of what fits")
    retry_gpu_memory_utilization: float | None = None
    retry_kv_cache_bytes: int | None = Field(None, description="a KV cache small enough to leave what the "
                                             "failed allocation after it lacked (cuda-oom-after-kv)")


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    build: Callable[[re.Match[str]], tuple[str, str, dict]]


def _r(kind: str, pattern: str, build: Callable[[re.Match[str]], tuple[str, str, dict]]) -> Rule:
    return Rule(kind, re.compile(pattern, re.IGNORECASE), build)


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _fixed(cause: str, remedy: str) -> Callable[[re.Match[str]], tuple[str, str, dict]]:
    return lambda m: (cause, remedy, {})


def _free_memory(m: re.Match[str]) -> tuple[str, str, dict]:
    free, total, gmu = float(m.group(1)), float(m.group(2)), float(m.group(3))
    fit = max(0.0, round(free / total - 0.03, 2))
    return (f"only {free:.2f} of {total:.2f} GiB was free on the GPU at start; vLLM wanted "
            f"{gmu:.2f} of it (--gpu-memory-utilization)",
            f"stop what holds GPU memory (`kanoa-local status` / nvidia-smi), or retry with "
            f"--gpu-memory-utilization {fit:.2f}", {"retry_gpu_memory_utilization": fit or None})


def _estimated_len(m: re.Match[str]) -> tuple[str, str, dict]:
    est = _int(m.group(1))
    return (f"--max-model-len needs more KV cache than is left; vLLM estimates {est:,} tokens fit",
            f"retry with --max-model-len {est} (or a smaller quantization for more room)",
            {"retry_max_model_len": est})


def _v0_len(m: re.Match[str]) -> tuple[str, str, dict]:
    want, fits = _int(m.group(1)), _int(m.group(2))
    return (f"--max-model-len {want:,} is more than the KV cache holds ({fits:,} tokens)",
            f"retry with --max-model-len {fits}", {"retry_max_model_len": fits})


def _quant(m: re.Match[str]) -> tuple[str, str, dict]:
    method, need, have = m.group(1), int(m.group(2)), int(m.group(3))
    return (f"{method} needs compute capability {need / 10:.1f}; this GPU has {have / 10:.1f}",
            "choose another precision (`kanoa-local plan MODEL` lists those this GPU runs)", {})


def _removed(m: re.Match[str]) -> tuple[str, str, dict]:
    return (f"this vLLM no longer serves the model (supported until {m.group(1)})",
            f"use an image of vLLM {m.group(1).lstrip('v')} or older (--image), as `kanoa-local plan` does", {})


def _driver(m: re.Match[str]) -> tuple[str, str, dict]:
    return (f"the NVIDIA driver is too old for this image (it needs CUDA {m.group(1)})",
            "update the driver, or let `kanoa-local plan` pick an image for this driver", {})


#: Most specific first; the first match wins.
RULES: list[Rule] = [
    _r("gpu-runtime-missing", r'could not select device driver "[^"]*" with capabilities: \[\[gpu\]\]'
       r"|unknown or invalid runtime name: nvidia",
       _fixed("Docker has no NVIDIA runtime, so it cannot give the container a GPU",
              "install the NVIDIA Container Toolkit, run `nvidia-ctk runtime configure "
              "--runtime=docker` and restart Docker")),
    _r("driver-too-old", r"unsatisfied condition: cuda>=([\d.]+)", _driver),
    _r("driver-too-old", r"NVIDIA driver on your system is too old \(found version (\d+)\)",
       lambda m: ("the NVIDIA driver is too old for the CUDA build in this image",
                  "update the driver, or let `kanoa-local plan` pick an older image", {})),
    _r("gpu-lost", r"fallen off the bus|Xid[^\n]{0,40}\b79\b|GPU is lost",
       _fixed("the GPU dropped off the PCIe bus (Xid 79): the card stopped answering the driver",
              "reseat the card and its power cables (an eGPU: the cable and enclosure), lower the PCIe "
              "generation in the firmware, check the power supply (`nvidia-smi -pl` caps the draw), then reboot")),
    _r("cuda-driver-mismatch", r"Error 803|system has unsupported display driver / cuda driver combination"
       r"|cudaErrorSystemDriverMismatch",
       _fixed("the CUDA libraries in the container do not match the host's driver (CUDA error 803)",
              "give the container its GPUs as device requests (`--gpus`, what kanoa-local's Docker runtime "
              "does) rather than `--runtime nvidia` or CDI devices; or put the driver's libraries first "
              "(LD_LIBRARY_PATH=/usr/local/nvidia/lib64), or use an image built for this driver")),
    _r("corrupt-weights", r"SafetensorError[^\n]*|Error while deserializing header[^\n]*|HeaderTooLarge"
       r"|MetadataIncompleteBuffer|incomplete metadata, file not fully covered",
       lambda m: (f"a weights file is damaged or not a safetensors file ({m.group(0).strip()[:120]})",
                  "download or copy the checkpoint again (a hub download: delete it from the Hugging Face "
                  "cache and run `kanoa-local pull`; a git clone: `git lfs pull`)", {})),
    _r("nccl-p2p", r"peer access is not supported between these two devices",
       _fixed("GPU peer-to-peer transfers failed between the tensor-parallel GPUs (common on consumer "
              "boards without P2P support)",
              "retry with NCCL_P2P_DISABLE=1 (kanoa-local does so once by itself), or use fewer GPUs")),
    _r("kernel-unsupported", r"No compiled cutlass_scaled_mm for (a compute capability less than )?CUDA "
       r"device capability: (\d+)",
       lambda m: (f"this vLLM build has no FP8/INT8 matrix kernel (CUTLASS scaled_mm) for compute "
                  f"capability {int(m.group(2)) / 10:.1f}",
                  "serve a precision without FP8/INT8 weights there (--quant bf16, awq or gptq), or an "
                  "image whose release has kernels for this GPU (`kanoa-local plan` picks by architecture)", {})),
    _r("gpu-memory-busy", r"Free memory on device \(([\d.]+)/([\d.]+) GiB\) on startup is less than "
       r"desired GPU memory utilization \(([\d.]+)", _free_memory),
    _r("max-model-len-too-large", r"estimated maximum model length is (\d[\d,]*)", _estimated_len),
    _r("max-model-len-too-large", r"max seq len \((\d[\d,]*)\) is larger than the maximum number of "
       r"tokens that can be stored in KV cache \((\d[\d,]*)\)", _v0_len),
    _r("max-model-len-too-large", r"KV cache is needed, which is larger than the available KV cache memory",
       _fixed("--max-model-len needs more KV cache than is left after the weights",
              "lower --max-model-len, or use a smaller quantization")),
    _r("no-kv-memory", r"No available memory for the cache blocks",
       _fixed("the weights and overheads leave no memory for the KV cache",
              "use a smaller quantization or a smaller model (`kanoa-local plan` shows what fits)")),
    _r("quantization-unsupported", r"quantization method (\S+?) is not supported for the current GPU\. "
       r"Minimum capability: (\d+)\. Current capability: (\d+)", _quant),
    _r("model-removed", r"supported in vLLM until (v?[\d.]+)", _removed),
    # Not the bare flag name: vLLM's config line prints "trust_remote_code=False" on every start.
    _r("trust-remote-code", r"consider setting `?trust_remote_code=True|set `?trust_remote_code=True|"
       r"requires you to execute the configuration file|contains custom code which must be executed",
       _fixed("the model ships its own code and vLLM was not allowed to run it",
              "add --trust-remote-code (kanoa-local does for models marked so in models.toml)")),
    _r("gated-no-token", r"GatedRepoError|Cannot access gated repo|You are trying to access a gated repo|"
       r"Access to model .* is restricted",
       _fixed("the model is gated on Hugging Face and no accepted token was given",
              "accept the license on the model's page, then set HF_TOKEN")),
    _r("shm-too-small", r"Insufficient space in /dev/shm|shm.*No space left on device|Bus error",
       _fixed("the container's shared memory (/dev/shm) is too small for vLLM",
              "run with --ipc=host or a larger --shm-size (kanoa-local sets one)")),
    _r("cuda-oom", r"CUDA out of memory|torch\.OutOfMemoryError|OutOfMemoryError: CUDA",
       _fixed("the GPU ran out of memory while the engine started",
              "lower --gpu-memory-utilization or --max-num-seqs, or use a smaller quantization")),
    _r("sigill", r"died unexpectedly \(exit code: -4\)|Illegal instruction|SIGILL",
       _fixed("a worker was killed by SIGILL: the CPU advertises instructions (AMX/AVX-512 bf16) "
              "it cannot run in this VM",
              "serve in float32 on the CPU engine (--dtype float32; kanoa-local's CPU plans do)")),
    _r("unsupported-head-dim", r"Unsupported CPU attention configuration: head_dim=(\d+)",
       lambda m: (f"the CPU attention kernels do not support head_dim {m.group(1)}",
                  "choose a model with a supported head size (64, 128, 256 ...) for the CPU engine", {})),
    _r("arch-unsupported", r"no kernel image is available for execution on the device",
       _fixed("this image has no kernels for this GPU's architecture",
              "use an image built for it (`kanoa-local plan` picks one by compute capability)")),
    _r("bind-address", r"cannot assign requested address",
       _fixed("the address to publish on is not one of that machine's own (a NAT'd or public address?)",
              "give --host ADDR with an address of that machine (`ip -br addr` there), or --host 0.0.0.0 "
              "for all of them (then firewall it)")),
    # vLLM >= 0.2x says "port N is used by process psutil.Process(...)" when its bind fails
    _r("port-in-use", r"address already in use|Errno 98|port is already allocated|port \d+ is used by process",
       _fixed("the port is already in use", "choose another --port, or `kanoa-local ps` to find the owner")),
    _r("engine-failed", r"Engine core initialization failed|EngineCore failed to start|RuntimeError: Engine",
       _fixed("the engine failed while starting", "see `kanoa-local logs` for vLLM's own message")),
]


_KV_SIZED = re.compile(r"Available KV cache memory: (\d+(?:\.\d+)?) GiB")
_TRIED = re.compile(r"Tried to allocate (\d+(?:\.\d+)?) (MiB|GiB)")
_FREE = re.compile(r"of which (\d+(?:\.\d+)?) (MiB|GiB) is free")
#: what a retry takes off the KV cache beyond the allocation that failed: the ones after it
#: (the rest of the graph capture, the sampler's warm-up) are not in the message
KV_RETRY_SLACK = 2 ** 30


def _oom_after_kv(log_text: str, at: int) -> Diagnosis | None:
    """A CUDA OOM after vLLM sized its KV cache (capturing CUDA graphs, warming the sampler up):
    the budget left too little beside it. The KV cache it sized, less what the allocation lacked
    and a GiB, is what a retry asks for (--kv-cache-memory-bytes)."""
    sized = [m for m in _KV_SIZED.finditer(log_text) if m.start() < at]
    if not sized:
        return None
    kv = float(sized[-1].group(1)) * 2 ** 30
    tail = log_text[at: at + 2000]
    tried, free = _TRIED.search(tail), _FREE.search(tail)
    scale = {"MiB": 2 ** 20, "GiB": 2 ** 30}
    short = max(0.0, (float(tried.group(1)) * scale[tried.group(2)] if tried else 0.0)
                - (float(free.group(1)) * scale[free.group(2)] if free else 0.0))
    retry = int(kv - short - KV_RETRY_SLACK)
    return Diagnosis(kind="cuda-oom-after-kv",
                     cause=f"the GPU ran out of memory after vLLM had sized its KV cache ({kv / 2 ** 30:.2f} GiB), "
                           "capturing CUDA graphs or warming up: too little was left beside its share",
                     remedy="lower --gpu-memory-utilization by a few hundredths, or --max-num-seqs",
                     retry_kv_cache_bytes=retry if retry > 0 else None)


def diagnose(log_text: str, *, oom_killed: bool = False, exit_code: int | None = None) -> Diagnosis:
    """The first rule that matches the log (the line nearest the end wins among its matches);
    an OOM-killed container or an unknown failure otherwise."""
    if oom_killed:
        return Diagnosis(kind="host-oom", cause="the kernel killed the engine: the machine ran out of RAM",
                         remedy="close other programs, or plan a smaller model (`kanoa-local plan`)")
    for rule in RULES:
        matches = list(rule.pattern.finditer(log_text))
        if not matches:
            continue
        m = matches[-1]
        cause, remedy, extra = rule.build(m)
        line_start = log_text.rfind("\n", 0, m.start()) + 1
        line_end = log_text.find("\n", m.end())
        evidence = log_text[line_start: line_end if line_end != -1 else None].strip()[:300]
        if rule.kind == "cuda-oom":
            after = _oom_after_kv(log_text, m.start())
            if after is not None:
                return after.model_copy(update={"evidence": evidence})
        return Diagnosis(kind=rule.kind, cause=cause, remedy=remedy, evidence=evidence, **extra)
    code = f" (exit code {exit_code})" if exit_code is not None else ""
    return Diagnosis(kind="unknown", cause=f"the engine stopped{code} without a message kanoa-local knows",
                     remedy="see `kanoa-local logs`, or run with --debug and report it")
