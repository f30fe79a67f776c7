"""The fit planner on every recorded GPU profile: verdicts a GPU-savvy user would agree with."""

from __future__ import annotations

import pytest

from kanoa_local.catalog import load_catalog
from kanoa_local.hardware import GIB, what_if
from kanoa_local.plan import PlanRequest, plan
from kanoa_local.plan.fit import MIN_CONTEXT
from kanoa_local.probe import load_preset, preset_names

CATALOG = load_catalog(user=False)


def run(profile_name: str, **req):
    return plan(load_preset(profile_name), CATALOG, PlanRequest(**req))


def best(result, model: str, precision: str | None = None):
    return next((c for c in result.candidates if c.model_id == model
                 and (precision is None or c.variant.precision == precision)), None)


@pytest.mark.parametrize("profile", preset_names())
def test_every_profile_and_model_gives_sound_verdicts(profile):
    p = load_preset(profile)
    r = plan(p, CATALOG)
    assert r.summary
    ids = {c.model_id for c in r.candidates}
    assert ids == set(CATALOG.models)
    for c in r.candidates:
        assert c.reasons, c.label                          # decisions come with reasons
        if c.fits == "no":
            assert c.settings is None
            continue
        s, m = c.settings, c.memory
        # Check point: never "fits" for a configuration vLLM would refuse
        assert s is not None and m is not None
        assert s.max_model_len >= min(MIN_CONTEXT, CATALOG.models[c.model_id].arch.max_context)
        assert m.kv is not None and m.kv.concurrency >= 1.0
        assert sum(t.bytes for t in m.terms) <= m.budget + 1
        if c.device == "gpu":
            gpus = [g for g in p.gpus if g.index in s.gpu_indices]
            assert len(gpus) == s.tensor_parallel_size
            # the startup check: free memory >= gmu × total
            assert all(s.gpu_memory_utilization * g.memory_total <= g.memory_free for g in gpus)
            for g in gpus:
                assert (g.cc_value or 0) >= c.variant.required_cc


def test_rtx5080_egpu_serves_molmo_in_4bit_not_bf16():
    r = run("rtx5080-egpu", model="molmo-7b-d", trust_remote_code=True)
    assert r.chosen is not None and r.chosen.variant.precision == "bnb-4bit"
    assert best(r, "molmo-7b-d", "bf16").fits == "no"
    # bitsandbytes is a plugin in current vLLM: planned on an image that has it built in
    assert r.chosen.settings.image.endswith("v0.19.1")
    assert r.chosen.settings.trust_remote_code


def test_l4_and_gemma_3_12b_bf16_does_not_fit_fp8_does():
    """The seed claims Gemma 3 12B in fp16 on a 24 GB L4: bf16 weights alone are 22.7 GiB."""
    r = run("l4", model="gemma-3-12b")
    bf16 = best(r, "gemma-3-12b", "bf16")
    assert bf16.fits == "no" and "budget" in bf16.reasons[0]
    assert best(r, "gemma-3-12b", "fp8").fits != "no"
    # the L4's budget is 0.92 × the 22.03 GiB CUDA reports: FP8 holds 4 requests of 6.6k, the
    # W4A16 checkpoint 4 of 10k, and the plan takes the one that reaches the 8k goal
    assert r.chosen.variant.precision in ("fp8", "w4a16")
    assert r.chosen.settings.max_model_len >= 8192


def test_v100_rejects_awq_and_fp8_and_plans_on_a_volta_image():
    r = run("v100")
    assert "compute capability 7.5" in best(r, "qwen2.5-vl-7b", "awq").reasons[0]
    assert "compute capability 7.5" in best(r, "llama-3.1-8b", "fp8").reasons[0]
    gptq = best(r, "llama-3.1-8b", "gptq")
    assert gptq.fits != "no" and gptq.settings.dtype == "float16"
    # Gemma 3 is refused in float16 and a V100 has no bfloat16: 4-bit kernels cannot run
    assert "float32" in best(r, "gemma-3-12b", "bnb-4bit").reasons[0]


def test_two_4090s_run_llama_70b_in_4bit_with_tensor_parallelism():
    r = run("2x-rtx4090", model="llama-3.1-70b")
    assert r.chosen is not None
    assert r.chosen.settings.tensor_parallel_size == 2
    assert r.chosen.variant.precision in ("awq", "gptq", "w4a16")
    one = run("2x-rtx4090", model="llama-3.1-70b", max_gpus=1)
    assert one.chosen is None and "does not fit" in one.summary and one.remedy


def test_h100_runs_llama_70b_in_fp8_on_one_gpu():
    r = run("h100", model="llama-3.1-70b", precision="fp8")
    assert r.chosen is not None and r.chosen.variant.precision == "fp8"
    assert r.chosen.settings.tensor_parallel_size == 1


def test_llama_3_2_vision_only_on_the_last_image_that_has_it():
    r = run("h100", model="llama-3.2-11b-vision")
    assert r.chosen.settings.image.endswith("v0.10.2")
    assert r.chosen.settings.max_num_seqs == 16


def test_mig_slice_is_planned_alone():
    r = run("a100-mig")
    assert r.chosen is not None and r.chosen.device == "gpu"
    assert "MIG" in r.chosen.gpu_name


def test_old_driver_says_which_driver_is_needed():
    r = run("old-driver", model="qwen3-vl-4b")
    assert r.chosen is None
    assert "CUDA 12.0" in r.candidates[0].reasons[0] and "driver" in r.candidates[0].reasons[0]


def test_other_processes_lower_gpu_memory_utilization():
    p = load_preset("rtx4090")
    g = p.gpus[0]
    busy = p.model_copy(update={"gpus": [g.model_copy(update={"memory_free": g.memory_total - 6 * GIB,
                                                              "memory_used": 6 * GIB})]})
    r = plan(busy, CATALOG, PlanRequest(model="llama-3.1-8b"))
    s = r.chosen.settings
    assert s.gpu_memory_utilization * g.memory_total <= g.memory_total - 6 * GIB
    assert any("other processes" in w for w in r.chosen.warnings)


def test_no_gpu_gives_a_cpu_plan_and_offline_picks_the_packaged_model():
    r = run("no-driver", offline=True)
    assert r.chosen is not None and r.chosen.device == "cpu"
    assert r.chosen.model_id == "gemma-3-270m" and r.chosen.variant.package
    s = r.chosen.settings
    assert s.dtype == "float32" and s.cpu_kv_cache_gib >= 1 and s.enforce_eager
    online = run("no-driver")
    assert online.chosen.device == "cpu" and CATALOG.models[online.chosen.model_id].cpu


def test_vision_request_excludes_text_models_and_nothing_fits_names_the_closest():
    r = run("t4", vision=True)
    assert r.chosen is not None and CATALOG.models[r.chosen.model_id].vision
    tiny = what_if(load_preset("t4"), vram_gb=4)
    r = plan(tiny, CATALOG, PlanRequest(model="llama-3.1-70b"))
    assert r.chosen is None and "does not fit" in r.summary and "GPU" in (r.remedy or "")


def test_what_if_gpus_and_vram():
    p = what_if(load_preset("no-driver"), vram_gb=24, gpus=2)
    assert len(p.gpus) == 2 and p.cuda_driver_version
    r = plan(p, CATALOG, PlanRequest(model="llama-3.1-70b"))
    assert r.chosen is not None and r.chosen.settings.tensor_parallel_size == 2


def test_given_nodes_are_all_used_when_asked():
    """Docker hosts given to `up` are all used: PP = nodes even where one node would do; per
    node a stage's share of the layers and of the KV cache."""
    one = run("no-driver", model="gemma-3-270m", offline=True).chosen
    two = run("no-driver", model="gemma-3-270m", offline=True, nodes=2, all_nodes=True).chosen
    assert one.settings.pipeline_parallel_size == 1 and two.settings.pipeline_parallel_size == 2
    assert two.memory.weights.total < one.memory.weights.total
    assert "per node of 2" in " ".join(two.reasons)
    # `plan --nodes 2` (nodes available, not given) keeps the fewest that fit
    assert run("no-driver", model="gemma-3-270m", offline=True, nodes=2).chosen.settings.pipeline_parallel_size == 1
    # GPUs: TP = GPUs per node, PP = every node
    g = run("rtx4090", model="llama-3.1-8b", nodes=3, all_nodes=True).chosen
    assert (g.settings.tensor_parallel_size, g.settings.pipeline_parallel_size) == (1, 3)
    assert g.gpu_name.startswith("3 nodes")


def test_cpu_pipeline_stages_are_traced_not_eager():
    """vLLM's CPU runner skips its warm-up in eager mode, and a later pipeline stage then has no
    buffer for the previous stage's output (AssertionError at the first request): multi-node
    CPU plans trace once and run eagerly (no C++ compiler needed)."""
    two = run("no-driver", model="gemma-3-270m", offline=True, nodes=2, all_nodes=True).chosen.settings
    one = run("no-driver", model="gemma-3-270m", offline=True).chosen.settings
    assert one.enforce_eager and not one.compilation_config
    assert not two.enforce_eager and two.compilation_config == {"mode": 2, "backend": "eager"}


def test_a_model_that_runs_its_repositorys_code_is_planned_only_when_asked():
    r = run("rtx5080-egpu", model="molmo-7b-d")
    assert r.chosen is None and "own Python code" in r.summary and "does not fit" not in r.summary
    assert "--trust-remote-code" in r.remedy and "allenai/Molmo-7B-D-0924" in r.remedy
    assert run("rtx5080-egpu", model="molmo-7b-d", trust_remote_code=True).chosen.settings.trust_remote_code
    # the best pick never lands on one without the flag
    for prof in ("l4", "h100", "rtx5080-egpu"):
        c = run(prof, vision=True).chosen
        assert c is not None and not c.settings.trust_remote_code, (prof, c.label)


def test_gated_belongs_to_the_variants_repository():
    """Gemma's own repos are gated; Red Hat's quantised copies are not: no token warning for them."""
    entry = CATALOG.get("gemma-3-12b")
    by_repo = {v.repo: entry.variant_gated(v) for v in entry.variants if v.repo}
    assert by_repo["google/gemma-3-12b-it"] is True
    assert by_repo["RedHatAI/gemma-3-12b-it-FP8-dynamic"] is False
    fp8 = run("l4", model="gemma-3-12b", precision="fp8", hf_token=False).chosen
    assert fp8.variant.repo.startswith("RedHatAI/") and not any("gated" in w for w in fp8.warnings)
    bf16 = run("h100", model="gemma-3-12b", precision="bf16", hf_token=False).chosen
    assert any("is gated" in w for w in bf16.warnings)
    # an explicit flag on the variant wins
    v = entry.variants[1].model_copy(update={"gated": True})
    assert entry.variant_gated(v)


def test_w4a16_on_turing_needs_the_release_that_brought_marlin_there():
    """vLLM PR 29901 (first in 0.14.0) runs compressed-tensors W4A16 through Marlin on Turing;
    before, the scheme asks for Ampere. A T4 whose R570 driver stops at the v0.10.2 image does
    not get W4A16 (AWQ instead, which that release runs on Turing); with a newer driver it does."""
    t4 = load_preset("t4")
    assert t4.cuda_driver_version == 12080
    r = plan(t4, load_catalog(user=False), PlanRequest(model="llama-3.1-8b", precision="w4a16"))
    w = [c for c in r.candidates if c.variant.precision == "w4a16"]
    assert w and all(c.fits == "no" for c in w)
    assert "v0.19.1" in w[0].reasons[0] and r.chosen is not None and r.chosen.variant.precision != "w4a16"
    newer = t4.model_copy(update={"cuda_driver_version": 13000})
    ok = plan(newer, load_catalog(user=False), PlanRequest(model="llama-3.1-8b", precision="w4a16")).chosen
    assert ok is not None and ok.variant.precision == "w4a16" and ok.settings.vllm_version != "0.10.2"
    pinned = plan(newer, load_catalog(user=False), PlanRequest(model="llama-3.1-8b", precision="w4a16", vllm_version="0.10.2"))
    assert all(c.fits == "no" for c in pinned.candidates if c.variant.precision == "w4a16")


def test_the_most_capable_model_that_fits_with_a_useful_context_is_chosen():
    """Eight H100s are not given a 12B (or a verified 7B at 4k): the largest vision model that
    fits with 8k for four requests at once is chosen; how far a model is tested decides only
    between models of one size. The "why not" of the others says what they lost on."""
    from kanoa_local.plan.fit import why_lost

    cat = load_catalog(user=False)
    big = plan(what_if(load_preset("h100"), gpus=8), cat, PlanRequest())
    c = big.chosen
    assert c.fits == "good" and c.settings.max_model_len >= 8192
    good = [x for x in big.candidates if x.fits == "good" and x.vision]
    assert cat.models[c.model_id].params_b == max(cat.models[x.model_id].params_b for x in good)
    smaller = next(x for x in big.candidates if x.fits == "good" and x.vision
                   and cat.models[x.model_id].params_b < cat.models[c.model_id].params_b)
    assert why_lost(smaller, c) == "smaller model"
    one = plan(load_preset("h100"), cat, PlanRequest()).chosen
    assert cat.models[one.model_id].params_b > cat.models["gemma-3-12b"].params_b
    assert plan(load_preset("l4"), cat, PlanRequest(vision=True)).chosen.settings.max_model_len >= 8192


def test_consumer_blackwell_gets_only_the_releases_with_its_kernels():
    """sm_120 is not "10.0 or newer" for vLLM's NVFP4 and FP8 paths (read in the wheels, see
    kanoa_local/plan/kernels.py): NVFP4 MoE on the v0.19.1 image is refused with the reason,
    on the newest image it is planned; dense NVFP4 needs 0.12; sm_121 (DGX Spark) has FP8 and
    NVFP4 kernels only from 0.20; a data-centre Blackwell (10.0) is not held back."""
    from kanoa_local.plan.kernels import refusal

    cat = load_catalog(user=False)
    pro = load_preset("rtx-pro-6000")
    assert pro.gpus[0].cc_value == 120
    old = plan(pro, cat, PlanRequest(model="llama-4-scout", precision="nvfp4", vllm_version="0.19.1"))
    nv = [c for c in old.candidates if c.variant.precision == "nvfp4"]
    assert nv and all(c.fits == "no" for c in nv) and "NVFP4 MoE on sm_120" in nv[0].reasons[0]
    new = plan(pro, cat, PlanRequest(model="llama-4-scout", precision="nvfp4")).chosen
    assert new is not None and new.variant.precision == "nvfp4" and new.settings.vllm_version >= "0.20"
    assert refusal("nvfp4", False, 120, "0.10.2") and not refusal("nvfp4", False, 120, "0.19.1")
    assert refusal("fp8", False, 121, "0.19.1") and not refusal("fp8", False, 120, "0.19.1")
    assert refusal("fp8", True, 120, "0.15.0") and not refusal("fp8", True, 120, "0.15.1")
    assert not refusal("nvfp4", True, 100, "0.10.2") and not refusal("awq", True, 120, "0.10.2")


def test_an_exact_context_nothing_reaches_is_answered_for_that_context():
    """--max-model-len beyond a model's own context is refused as vLLM would (no GPU helps, so no
    "needs"), even where its weights do not fit either; the closest miss is sized for the context
    asked, not the 2k minimum."""
    cat = load_catalog(user=False)
    r = plan(load_preset("l4"), cat, PlanRequest(max_model_len=200_000, trust_remote_code=True))
    assert r.chosen is None
    for c in r.candidates:
        if cat.get(c.model_id).arch.max_context < 200_000:
            assert c.reasons and "vLLM refuses it" in c.reasons[0] and c.needs is None, (c.label, c.reasons, c.needs)
    assert "for 200,000 tokens" in (r.remedy or ""), r.remedy


def test_nothing_fits_for_a_setting_says_the_setting():
    """When no model is short of memory alone but a setting asked for turns most away, the
    remedy names it (it said "add a smaller model to models.toml")."""
    cat = load_catalog(user=False)
    four = what_if(load_preset("h100"), gpus=4)
    for tp, words in ((8, "needs 8 identical GPUs; this machine has 4"), (3, "do not split over 3 GPUs")):
        r = plan(four, cat, PlanRequest(tensor_parallel_size=tp, trust_remote_code=True))
        assert r.chosen is None and "were refused: --tensor-parallel-size" in (r.remedy or "") \
            and words in (r.remedy or ""), r.remedy


def test_a_share_too_small_is_answered_with_the_share_that_would_do():
    """With --gpu-memory-utilization given, a miss names the larger share that holds the plan on
    this GPU (with the KV margin) before the cards; planned at that share, it fits."""
    from kanoa_local.plan.devices import cards_for

    cat = load_catalog(user=False)
    l4 = load_preset("l4")
    for model, precision, ctx in (("gemma-3-270m", "bf16", None), ("llama-3.1-8b", "bf16", 8192)):
        r = plan(l4, cat, PlanRequest(model=model, precision=precision, gpu_memory_utilization=0.3 if ctx else 0.05,
                                      max_model_len=ctx))
        miss = next(c for c in r.candidates if c.variant.precision == precision)
        assert miss.fits == "no" and miss.needs and miss.needs.startswith("--gpu-memory-utilization "), miss.needs
        share = float(miss.needs.split()[1])
        again = plan(l4, cat, PlanRequest(model=model, precision=precision, gpu_memory_utilization=share,
                                          max_model_len=ctx))
        assert again.chosen is not None and again.chosen.variant.precision == precision, (share, again.summary)
    arch = cat.get("llama-3.1-8b").arch
    # a share no larger than the one asked, or beyond what is free, is not offered
    assert "here" not in cards_for(10 * GIB, 8192, arch, 2, 1, 0.9, asked=(0.9, 20 * GIB, 20 * GIB))[0]
    assert "here" not in cards_for(10 * GIB, 8192, arch, 2, 1, 0.9, asked=(0.3, 20 * GIB, 8 * GIB))[0]
    assert cards_for(10 * GIB, 8192, arch, 2, 1, 0.9, asked=(0.3, 20 * GIB, 20 * GIB))[0].startswith(
        "--gpu-memory-utilization 0.57 here, or ")
