"""What vLLM's start-up profiling holds that the planner models release by release: the dummy
video a vision model is profiled with when videos are allowed, the scheduler defaults of each
release, and what a GPU model keeps outside the budget (the driver's reserve, the CUDA context)."""

from __future__ import annotations

import json

from kanoa_local.catalog import load_catalog
from kanoa_local.engine.spec import vllm_args
from kanoa_local.hardware import GIB
from kanoa_local.plan import PlanRequest, plan
from kanoa_local.plan import profiling as prof
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
    c = chosen("l40s", model="qwen2.5-vl-7b", max_model_len=32768)
    with_video = chosen("l40s", model="qwen2.5-vl-7b", max_model_len=32768, limit_mm_per_prompt={"image": 1})
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
    assert prof.scheduler_defaults("gpu", a100, "NVIDIA A100-SXM4-80GB", vllm="0.8.5") == (8192, 1024)
    assert prof.scheduler_defaults("gpu", a100, "NVIDIA A100-SXM4-80GB", vllm="0.9.2") == (2048, 256)
    assert prof.scheduler_defaults("gpu", h100, "NVIDIA H100 80GB HBM3", vllm="0.19.1") == (8192, 1024)
    assert prof.scheduler_defaults("gpu", 24 * GIB, "NVIDIA GeForce RTX 3090", vllm="0.8.1") == (2048, 1024)
    assert prof.scheduler_defaults("gpu", 24 * GIB, "NVIDIA GeForce RTX 3090", vllm="0.8.5") == (2048, 256)
    assert prof.scheduler_defaults("gpu", 179 * GIB, "NVIDIA B200", vllm="0.25.1") == (8192, 1024)
    assert prof.scheduler_defaults("gpu", 179 * GIB, "NVIDIA B200") == (16384, 1024)


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


def test_what_cuda_sees_free_is_never_more_than_its_total():
    """A profile whose NVML free figure is more than the total CUDA reports (NVML's "used" left the
    driver's reserve out) is planned on what CUDA can have."""
    from kanoa_local.plan.devices import cuda_free

    l4 = 23034 * 2**20
    cuda_total = visible_total("NVIDIA L4", l4)
    assert cuda_free("NVIDIA L4", l4, l4 - 300 * 2**20) == cuda_total          # idle: CUDA's total
    assert cuda_free("NVIDIA L4", l4, 10 * GIB) == 10 * GIB                      # busy: what NVML says
    c = chosen("l4", model="llama-3.1-8b", precision="awq")
    assert c.memory.per_device_free <= cuda_total


def test_graphs_captured_beside_the_budget_leave_room_for_the_allocator():
    """Before 0.20 the graphs are captured after the KV cache, beside the share; a plan keeps the
    allocator's slack there too, twice it where NCCL runs without P2P. Qwen3-Coder-30B on four L4s
    at 0.9 on vLLM 0.12 ran out of memory warming its sampler up after the capture (AbstractCore's
    report): the plan runs it without graphs rather than promise them."""
    from kanoa_local.hardware import what_if
    from tests.conftest import ROOT

    cal = load_catalog([ROOT / "benchmarks" / "data" / "calibration" / "models.toml"], user=False)
    req = PlanRequest(model="cal-qwen3-30b-a3b", precision="bf16", tensor_parallel_size=4, gpu_memory_utilization=0.9,
                      max_model_len=8192, max_num_seqs=256, vllm_version="0.12.0")
    c = plan(what_if(load_preset("l4"), gpus=4), cal, req).chosen
    assert c is not None and c.eager and any("beside the 0.9 share" in w for w in c.warnings), c.warnings
    assert prof.beside_slack(4, p2p=False) > prof.beside_slack(4, p2p=True) > prof.beside_slack(1, True, graphs_inside=True)
    # where the graphs are inside the budget (0.20 on) the same start keeps them
    newer = plan(what_if(load_preset("l4"), gpus=4), cal, req.model_copy(update={"vllm_version": "0.33.0"})).chosen
    assert newer is not None and not newer.eager
    # at 0.95 not even the eager start has its slack beside the share: refused, in numbers
    no = plan(what_if(load_preset("l4"), gpus=4), cal, req.model_copy(update={"gpu_memory_utilization": 0.97}))
    why = no.candidates[0].reasons[0]
    assert no.chosen is None and "beside the 0.97 share even without CUDA graphs" in why, why
    assert "what grows outside it after profiling (0.8 GiB): 0.8 GiB in all" in why and " for :" not in why, why


def test_graph_memory_follows_the_logged_captures():
    """vLLM 0.19 on H100s up to 512 sequences: 0.81-0.96 GiB for 28-36 layers, 1.54-1.85 for 80;
    the sampler's own peak is the profiling peak when the forward pass is smaller (2.29 GiB for
    Qwen2.5 72B at TP 2, 1,024 sequences)."""
    llama8 = CAT.models["llama-3.1-8b"].arch
    llama70 = CAT.models["llama-3.1-70b"].arch
    g8 = prof.cuda_graph_bytes(llama8, 1024, 1, 8192, vllm="0.19.1").bytes / GIB
    g70 = prof.cuda_graph_bytes(llama70, 1024, 2, 8192, vllm="0.19.1").bytes / GIB
    assert 0.85 <= g8 <= 1.1 and 1.6 <= g70 <= 1.9, (g8, g70)
    assert prof.cuda_graph_bytes(llama8, 1, 1, 8192, vllm="0.19.1").bytes < 0.1 * GIB     # one sequence: two sizes
    a = prof.activation_bytes(CAT.models["llama-3.1-8b"], 8192, 1024, 2, vllm="0.19.1")
    assert a.bytes >= prof.sampler_bytes(llama8.vocab, 1024, "0.19.1")


def test_which_model_runner_each_release_starts():
    """vLLM's V2 model runner by release (config/vllm.py of the 0.22-0.33 wheels): dense Qwen3 first,
    then Llama/Mistral, their quantised checkpoints, every dense model, and from 0.29 all."""
    from kanoa_local.plan.runner import runner

    llama, mixtral, vl = CAT.models["llama-3.1-8b"], CAT.models["mixtral-8x7b"], CAT.models["qwen2.5-vl-7b"]
    bf16 = next(v for v in llama.variants if not v.is_quantised)
    awq = next(v for v in llama.variants if v.is_quantised)
    assert runner("0.19.1", llama, bf16) == "v1" and runner("0.22.0", llama, bf16) == "v1"
    assert runner("0.23.0", llama, bf16) == "v2" and runner("0.23.0", llama, awq) == "v1"
    assert runner("0.24.0", llama, awq) == "v2"
    assert runner("0.25.0", vl, vl.variants[0]) == "v2" and runner("0.28.0", mixtral, mixtral.variants[0]) == "v1"
    assert runner("0.29.0", mixtral, mixtral.variants[0]) == "v2" and runner(None, llama, bf16) == "v2"


def test_the_v2_runner_keeps_its_sampler_state_and_graphs_where_each_release_does():
    """Its [max_num_seqs, vocab] penalty counts are inside the budget from 0.27 (beside it before);
    its CUDA graphs are estimated into the budget from 0.29 (captured beside it before)."""
    def where(version):
        c = chosen("h100", model="llama-3.1-8b", precision="bf16", vllm_version=version)
        inside = {t.name for t in c.memory.terms}
        beside = {t.name for t in c.memory.outside_budget}
        return inside, beside
    inside, beside = where("0.33.0")
    assert {"sampler state", "CUDA graphs"} <= inside and "cold torch.compile" in \
        next(t.note for t in chosen("h100", model="llama-3.1-8b", precision="bf16").memory.terms if t.name == "activations")
    inside, beside = where("0.27.1")
    assert "sampler state" in inside and "CUDA graphs" in beside
    inside, beside = where("0.26.1")
    assert "sampler state" in beside and "CUDA graphs" in beside
    inside, beside = where("0.19.1")
    assert "sampler state" not in inside | beside


def test_qwen3_32b_on_two_rtx_pro_6000s_at_a_small_share_fits_as_it_started():
    """The public 0.27.1 start (TP 2, --gpu-memory-utilization 0.426, 32k: 8.22 GiB of KV cache per
    card): the V2 runner's overheads (1.66 GiB a card) are not V1's (5.8), so the plan says it fits."""
    from kanoa_local.hardware import what_if
    from tests.conftest import ROOT

    cal = load_catalog([ROOT / "benchmarks" / "data" / "calibration" / "models.toml"], user=False)
    req = PlanRequest(model="cal-qwen3-32b", precision="bf16", tensor_parallel_size=2, gpu_memory_utilization=0.426,
                      max_model_len=32768, vllm_version="0.27.1")
    c = plan(what_if(load_preset("rtx-pro-6000"), gpus=2), cal, req).chosen
    assert c is not None and 6.5 * GIB < c.memory.kv_bytes <= 8.22 * GIB, c and c.memory.kv_bytes / GIB


def test_the_v2_warm_up_after_the_kv_cache_needs_room_beside_the_share_until_0_33():
    """Up to 0.32 the V2 runner's kernel warm-up samples with every feature on after the KV cache,
    beside the budget; 0.33 profiles that pass first, so the same share is fine there."""
    req = dict(model="llama-3.1-8b", precision="bf16", gpu_memory_utilization=0.99)
    r = plan(load_preset("h100"), CAT, PlanRequest(**req, vllm_version="0.30.0"))
    asked = next(c for c in r.candidates if c.variant.precision == "bf16")
    assert r.chosen is None or r.chosen.variant.precision != "bf16"
    assert "kernel warm-up" in asked.reasons[0] and "beside the 0.99 share" in asked.reasons[0], asked.reasons
    assert chosen("h100", **req, vllm_version="0.33.0").variant.precision == "bf16"


def test_enforce_eager_also_saves_the_cold_compile_on_the_v2_runner():
    """--enforce-eager turns torch.compile off as well as the graphs (vLLM's config: mode NONE), so
    a V2 plan that runs eager no longer carries the cold compile's peak."""
    ask = {"model": "llama-3.1-8b", "precision": "bf16", "kv_cache_dtype": "auto"}
    graphs_on = chosen("l4", **ask, max_model_len=16384)
    assert not graphs_on.eager
    # a little more context than fits beside the graphs: the plan runs eager
    c = chosen("l4", **ask, max_model_len=graphs_on.memory.largest_context + 1024)
    act = next(t for t in c.memory.terms if t.name == "activations")
    assert c.variant.precision == "bf16" and c.eager and "eager" in act.note and "torch.compile" not in act.note
    assert any("CUDA graphs and torch.compile off" in w for w in c.warnings), c.warnings
    assert act.bytes < next(t.bytes for t in graphs_on.memory.terms if t.name == "activations")
