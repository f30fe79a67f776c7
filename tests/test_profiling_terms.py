"""What vLLM's start-up profiling holds that the planner models release by release: the dummy
video a vision model is profiled with when videos are allowed, the scheduler defaults of each
release, and what a GPU model keeps outside the budget (the driver's reserve, the CUDA context)."""

from __future__ import annotations

import json

from kanoa_local.catalog import load_catalog
from kanoa_local.engine.spec import vllm_args
from kanoa_local.hardware import GIB
from kanoa_local.plan import PlanRequest, plan
from kanoa_local.plan import memory as mem
from kanoa_local.plan.devices import cuda_context, cuda_reserve, visible_total
from kanoa_local.plan.multimodal import video_tokens
from kanoa_local.probe import load_preset
from tests.conftest import run_cli

CAT = load_catalog(user=False)


def chosen(gpu: str, **req):
    r = plan(load_preset(gpu), CAT, PlanRequest(**req))
    assert r.chosen is not None, r.summary
    return r.chosen


def act(c) -> int:
    return next(t.bytes for t in c.memory.terms if t.name == "activations")


def test_plans_name_videos_so_vllm_does_not_profile_a_dummy_video():
    c = chosen("l4", model="qwen2.5-vl-7b", max_model_len=32768)
    args = vllm_args(c, model_ref="m", served_name="m", host="127.0.0.1", port=8000)
    assert json.loads(args[args.index("--limit-mm-per-prompt") + 1]) == {"image": 1, "video": 0}
    # allowing videos (vLLM's default when a JSON limit leaves them out) profiles one sized from
    # --max-model-len on Qwen2.5-VL from 0.11: 2 × 16,384 tokens at 32k
    with_video = chosen("l4", model="qwen2.5-vl-7b", max_model_len=32768, limit_mm_per_prompt={"image": 1})
    assert with_video.settings.limit_videos == 999 and act(with_video) > act(c) + 4 * GIB
    assert "dummy video of 32,768 tokens" in next(t.note for t in with_video.memory.terms if t.name == "activations")
    assert video_tokens("qwen2_5_vl", "0.10.2", 131072) == 16384        # before 0.11: about one image
    assert video_tokens("qwen2_5_vl", "0.19.1", 262144) == 7 * 16384    # capped at 7 frame pairs
    assert video_tokens("gemma3", "0.19.1", 32768) == 0


def test_the_limit_takes_vllms_json_form_and_refuses_what_it_cannot_plan():
    r = run_cli("plan", "qwen2.5-vl-7b", "--gpu", "h100", "--limit-mm-per-prompt", '{"image":2,"video":1}', "--json")
    assert r.returncode == 0, r.stderr
    cmd = json.loads(r.stdout)["command"]
    assert '{"image":2,"video":1}' in cmd
    for bad in ('{"audio":1}', "{not json", '{"image":-1}', "1000"):
        r = run_cli("plan", "qwen2.5-vl-7b", "--gpu", "h100", "--limit-mm-per-prompt", bad)
        assert r.returncode == 2 and "--limit-mm-per-prompt" in r.stderr and "Traceback" not in r.stderr, bad


def test_scheduler_defaults_follow_the_release():
    a100, h100 = 80 * GIB, 79 * GIB
    assert mem.scheduler_defaults("gpu", a100, "NVIDIA A100-SXM4-80GB", vllm="0.8.5") == (8192, 1024)
    assert mem.scheduler_defaults("gpu", a100, "NVIDIA A100-SXM4-80GB", vllm="0.9.2") == (2048, 256)
    assert mem.scheduler_defaults("gpu", h100, "NVIDIA H100 80GB HBM3", vllm="0.19.1") == (8192, 1024)
    assert mem.scheduler_defaults("gpu", 24 * GIB, "NVIDIA GeForce RTX 3090", vllm="0.8.1") == (2048, 1024)
    assert mem.scheduler_defaults("gpu", 24 * GIB, "NVIDIA GeForce RTX 3090", vllm="0.8.5") == (2048, 256)
    assert mem.scheduler_defaults("gpu", 179 * GIB, "NVIDIA B200", vllm="0.25.1") == (8192, 1024)
    assert mem.scheduler_defaults("gpu", 179 * GIB, "NVIDIA B200") == (16384, 1024)


def test_what_a_gpu_keeps_outside_the_budget():
    # NVML's total less the smallest CUDA total seen: an L4 reports 22.03 GiB of its 23034 MiB
    l4 = 23034 * 2**20
    assert abs(visible_total("NVIDIA L4", l4) / GIB - 22.03) < 0.01
    assert cuda_reserve("NVIDIA A10G", 23028 * 2**20) > cuda_reserve("NVIDIA A100-SXM4-80GB", 80 * GIB) / 2
    assert cuda_reserve("NVIDIA A100-SXM4-40GB MIG 3g.20gb", 19968 * 2**20) == int(0.5 * GIB)   # not the parent's
    assert cuda_reserve("Some Future GPU", 200 * GIB) == int(0.011 * 200 * GIB)
    # the worker's context: small parts hold less; from 0.11 tensor parallelism adds its buffers
    assert cuda_context("NVIDIA L4") < cuda_context("NVIDIA H100 80GB HBM3") < cuda_context("NVIDIA B200")
    assert cuda_context("NVIDIA H100 80GB HBM3", tp=4, vllm="0.19.1") > cuda_context("NVIDIA H100 80GB HBM3", tp=4, vllm="0.10.2")
    assert cuda_context("NVIDIA GeForce RTX 3090", tp=2, p2p=False, vllm="0.19.1") < int(0.7 * GIB)
    c = chosen("2x-rtx4090", model="llama-3.1-8b", tensor_parallel_size=2)
    ctx = next(t for t in c.memory.outside_budget if t.name == "CUDA context")
    assert "NCCL" in ctx.note and ctx.bytes > cuda_context("NVIDIA GeForce RTX 4090")


def test_a_longer_context_up_to_the_goal_beats_a_16_bit_kv_cache():
    """Gemma 3 12B in FP8 on an L4: a 16-bit KV cache holds 4 requests of only 2.5k, an FP8
    one 4 of 6.6k: the plan takes the FP8 KV cache."""
    c = chosen("l4", model="gemma-3-12b", precision="fp8")
    assert c.settings.kv_cache_dtype == "fp8" and c.settings.max_model_len > 4096
