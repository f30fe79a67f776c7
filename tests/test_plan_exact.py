"""`plan` answers the exact question: vLLM's own arguments planned as given (--max-model-len,
--gpu-memory-utilization, --tensor-parallel-size, --max-num-seqs, --limit-mm-per-prompt,
--kv-cache-dtype) — fits or not, by how much, and the longest context it leaves."""

from __future__ import annotations

import json

import pytest

from kanoa_local.catalog import load_catalog
from kanoa_local.engine.spec import vllm_args
from kanoa_local.hardware import GIB
from kanoa_local.plan import PlanRequest, plan
from kanoa_local.probe import load_preset
from tests.conftest import run_cli

CAT = load_catalog(user=False)


def one(gpu: str, **req):
    r = plan(load_preset(gpu), CAT, PlanRequest(**req))
    return r, (r.chosen or r.candidates[0])


def test_an_exact_context_is_planned_as_given_with_its_room():
    r, c = one("l4", model="llama-3.1-8b", max_model_len=20000)
    assert c.settings.max_model_len == 20000                     # not rounded to a step
    m = c.memory
    assert m.largest_context >= 20000 and m.headroom_bytes > 0
    assert [t.name for t in m.terms][-1] == "KV cache"           # the KV cache is in the breakdown
    args = vllm_args(c, model_ref="m", served_name="m", host="127.0.0.1", port=8000)
    assert args[args.index("--max-model-len") + 1] == "20000"


def test_an_exact_context_that_does_not_fit_says_the_longest_that_does():
    r, c = one("rtx3060-gen2", model="llama-3.1-8b", max_model_len=131072)
    assert r.chosen is None
    why = next(x for x in r.candidates if "longest context that fits" in " ".join(x.reasons))
    assert "needs" in why.reasons[0] and why.memory.headroom_bytes < 0
    # the planner's own answer for one request is what it then accepts
    longest = why.memory.largest_context
    assert longest > 0
    r2 = plan(load_preset("rtx3060-gen2"), CAT, PlanRequest(model="llama-3.1-8b", max_model_len=longest,
                                                             precision=why.variant.precision))
    assert any(x.fits != "no" and x.variant.precision == why.variant.precision for x in r2.candidates)


def test_a_context_beyond_the_models_is_refused_in_vllms_terms():
    r, c = one("h100", model="llama-3.1-8b", max_model_len=200_000)
    assert r.chosen is None and "vLLM refuses it" in c.reasons[0]


def test_a_memory_share_more_than_is_free_is_vllms_startup_failure():
    prof = load_preset("l4")
    g = prof.gpus[0]
    busy = prof.model_copy(update={"gpus": [g.model_copy(update={"memory_free": int(g.memory_total * 0.6)})]})
    r = plan(busy, CAT, PlanRequest(model="llama-3.1-8b", gpu_memory_utilization=0.9))
    assert r.chosen is None
    assert any("Free memory on device" in x.reasons[0] for x in r.candidates)
    # without the flag the planner lowers the share itself (and says so)
    auto = plan(busy, CAT, PlanRequest(model="llama-3.1-8b"))
    assert auto.chosen is not None and auto.chosen.settings.gpu_memory_utilization < 0.6


def test_a_given_memory_share_reaches_vllm_unrounded():
    r, c = one("l4", model="llama-3.1-8b", gpu_memory_utilization=0.855)
    assert c.settings.gpu_memory_utilization == 0.855
    args = vllm_args(c, model_ref="m", served_name="m", host="127.0.0.1", port=8000)
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.855"
    smaller = one("l4", model="llama-3.1-8b", gpu_memory_utilization=0.6)[1]
    assert smaller.memory.budget < c.memory.budget


def test_tensor_parallel_as_given_or_why_not():
    r, c = one("2x-rtx4090", model="llama-3.1-8b", tensor_parallel_size=2)
    assert c.settings.tensor_parallel_size == 2
    r, c = one("l4", model="llama-3.1-8b", tensor_parallel_size=2)
    assert r.chosen is None and "needs 2 identical GPUs" in c.reasons[0]
    r, c = one("2x-rtx4090", model="llama-3.1-8b", tensor_parallel_size=3)
    assert r.chosen is None and "do not split over 3 GPUs" in c.reasons[0]


def test_max_num_seqs_and_images_per_prompt_change_the_profile_and_reach_vllm():
    base = one("l4", model="qwen2.5-vl-7b", max_model_len=8192)[1]
    few = one("l4", model="qwen2.5-vl-7b", max_model_len=8192, max_num_seqs=4)[1]
    def act(c):      # what the profile holds beyond the weights and the KV cache
        return sum(t.bytes for t in c.memory.terms if t.name not in ("weights", "KV cache"))
    assert act(few) < act(base)
    args = vllm_args(few, model_ref="m", served_name="m", host="127.0.0.1", port=8000)
    assert args[args.index("--max-num-seqs") + 1] == "4"
    text_only = one("l4", model="qwen2.5-vl-7b", max_model_len=8192, limit_mm_per_prompt=0)[1]
    assert act(text_only) < act(base)
    args = vllm_args(text_only, model_ref="m", served_name="m", host="127.0.0.1", port=8000)
    assert json.loads(args[args.index("--limit-mm-per-prompt") + 1]) == {"image": 0, "video": 0}


def test_the_cpu_engine_sizes_its_kv_space_for_an_exact_context():
    r, c = one("no-driver", model="gemma-3-270m", device="cpu", max_model_len=32768)
    assert c.settings.max_model_len == 32768 and c.memory.kv_bytes >= c.settings.cpu_kv_cache_gib * GIB
    assert c.memory.headroom_bytes >= 0
    r, c = one("no-driver", model="gemma-3-270m", device="cpu", tensor_parallel_size=2)
    assert r.chosen is None and "for GPUs" in c.reasons[0]


@pytest.mark.parametrize("flag,value", [("--max-model-len", "0"), ("--gpu-memory-utilization", "1.5"),
                                        ("--gpu-memory-utilization", "nan"), ("--tensor-parallel-size", "0"),
                                        ("--max-num-seqs", "-1"), ("--limit-mm-per-prompt", "x")])
def test_bad_engine_arguments_are_usage_errors(flag, value):
    r = run_cli("plan", "--gpu", "l4", flag, value)
    assert r.returncode == 2 and r.stderr.startswith("Error: ") and flag in r.stderr and "Traceback" not in r.stderr


def test_plan_up_and_export_take_the_same_engine_arguments():
    for cmd in ("plan", "up", "export", "session"):
        h = run_cli(cmd, "--help").stdout
        for flag in ("--max-model-len", "--gpu-memory-utilization", "--tensor-parallel-size", "--max-num-seqs",
                     "--limit-mm-per-prompt", "--kv-cache-dtype"):
            assert flag in h, (cmd, flag)
    r = run_cli("plan", "llama-3.1-8b", "--gpu", "rtx3060-gen2", "--max-model-len", "131072", "--strict")
    assert r.returncode == 5 and "longest context that fits" in r.stderr
    r = run_cli("plan", "llama-3.1-8b", "--gpu", "l4", "--max-model-len", "20000", "--json")
    assert json.loads(r.stdout)["plan"]["chosen"]["settings"]["max_model_len"] == 20000


def test_a_gpu_can_be_named_without_a_profile():
    from kanoa_local.probe import load_preset as lp

    p = lp("rtx3090")
    assert p.gpus[0].name == "NVIDIA GeForce RTX 3090" and p.gpus[0].compute_capability == (8, 6)
    assert p.gpus[0].memory_total == 24576 * 2**20 and "constructed" in p.source
    r = run_cli("plan", "--gpu", "h200", "llama-3.1-70b", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["plan"]["chosen"] is not None


def test_a_vllm_release_pins_the_image_and_its_memory_rules():
    new = one("h100", model="llama-3.1-8b", precision="bf16")[1]
    old = one("h100", model="llama-3.1-8b", precision="bf16", vllm_version="0.19")[1]
    assert old.settings.image.endswith(":v0.19.1") and new.settings.image.endswith(":v0.33.0")
    # before 0.20 the CUDA graphs are captured outside the budget
    assert "CUDA graphs" in [t.name for t in old.memory.outside_budget]
    assert "CUDA graphs" in [t.name for t in new.memory.terms]
    r = run_cli("plan", "--gpu", "l4", "--vllm-version", "latest")
    assert r.returncode == 2 and "--vllm-version" in r.stderr


def test_only_cuda_graphs_in_the_way_means_eager_not_no():
    r, c = one("2x-rtx4090", model="llama-3.1-70b")
    assert c.fits != "no" and c.settings.enforce_eager
    assert any("--enforce-eager" in w for w in c.warnings)
    assert "--enforce-eager" in vllm_args(c, model_ref="m", served_name="m", host="127.0.0.1", port=8000)
    roomy = one("h100", model="llama-3.1-8b")[1]
    assert not roomy.settings.enforce_eager


def test_the_estimator_benchmark_runs_the_shipped_planner():
    """benchmarks/estimator.py asks plan() (not a copy of its arithmetic) for the calibration rows."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "estimator.py")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "rows planned:" in r.stdout and "'fits' where vLLM failed: plan()" in r.stdout
    src = (ROOT / "benchmarks" / "estimator.py").read_text()
    assert "plan(profile, catalog, req)" in src and "activation_bytes" not in src


def test_a_context_within_the_estimates_error_of_the_edge_is_not_promised():
    """The longest context a plan names is one the exact question then accepts; a longer one
    that the estimate says would still just fit (less than 10 % of KV cache to spare) is refused
    with that reason: the KV estimate is off by up to ~20 % on the calibration set, and vLLM
    refuses a start that falls short. (On 0.19 the graphs are captured beside the share: running
    eager would not give the KV cache more room, as it does where they are inside it.)"""
    from kanoa_local.plan import memory as mem
    from kanoa_local.plan.models import KV_MARGIN

    prof = load_preset("l4")
    base = dict(model="llama-3.1-8b", precision="bf16", kv_cache_dtype="auto", gpu_memory_utilization=0.9,
                vllm_version="0.19")
    c = plan(prof, CAT, PlanRequest(**base, max_model_len=4096)).chosen
    largest = c.memory.largest_context
    assert plan(prof, CAT, PlanRequest(**base, max_model_len=largest)).chosen is not None
    arch = CAT.models["llama-3.1-8b"].arch
    edge = mem.max_len_for(arch, c.memory.kv_bytes, 1.0, kv_dtype_bytes=2, tp=1, block_size=16,
                           in_flight_tokens=2 * 2048, ceiling=arch.max_context)
    assert edge > largest * 1.05
    r = plan(prof, CAT, PlanRequest(**base, max_model_len=edge - 256))
    asked = next(x for x in r.candidates if x.label == c.label)
    assert asked.fits == "no" and f"{KV_MARGIN - 1:.0%} to spare" in asked.reasons[0], asked.reasons


def test_a_release_between_the_known_lines_is_planned_on_its_own_image():
    """--vllm-version 0.12.0 is that release (its tag, its CUDA, its memory rules), not the
    nearest line after it; a series ("0.19") takes the line kanoa-local knows of it."""
    from kanoa_local.images import release_lines

    (line,) = release_lines("0.12.0")
    assert (line.tag, line.cuda, line.min_cc) == ("v0.12.0", 12090, 70)
    assert release_lines("0.9.2")[0].min_cc == 75          # the v0.9.x images lack Volta
    assert release_lines("0.8.1")[0].cuda == 12040
    assert [ln.tag for ln in release_lines("0.19")] == ["v0.19.1"]
    assert release_lines("0.5.0") == [] and release_lines("9.0") == []
    c = one("l4", model="llama-3.1-8b", precision="bf16", vllm_version="0.12.0")[1]
    assert c.settings.image.endswith(":v0.12.0") and c.settings.vllm_version == "0.12.0"
    # 0.11.1-0.16 sort the vocabulary in the sampler: the activations say so
    assert "sorted by the sampler" in next(t.note for t in c.memory.terms if t.name == "activations")


@pytest.mark.parametrize("bad", [{"limit_mm_per_prompt": {"audio": 1}}, {"gpu_memory_utilization": 1.5},
                                 {"max_num_seqs": 0}])
def test_the_library_refuses_bad_engine_settings_as_the_cli_does(bad):
    """kanoa_local.up(...) with a setting the planner cannot take raises the project's UsageError
    (one line, a remedy, exit code 2), not pydantic's ValidationError, before anything starts."""
    import kanoa_local
    from kanoa_local.errors import UsageError

    with pytest.raises(UsageError) as err:
        kanoa_local.up("qwen2.5-vl-7b", profile=load_preset("l4"), runtime="process", **bad)
    assert "\n" not in str(err.value) and err.value.remedy and err.value.exit_code == 2


@pytest.mark.parametrize("gpu,model,precision", [("l4", "llama-3.1-8b", "bf16"), ("l4", "qwen2.5-vl-7b", "fp8"),
                                                 ("rtx4090", "gemma-3-12b", "fp8"), ("a10", "mistral-7b", "bf16"), ("a100-40g", "internvl3-8b", "bf16")])
def test_a_longer_context_never_fits_where_a_shorter_one_does_not(gpu, model, precision):
    """Fitting is monotonic in --max-model-len: where graphs on leave too little KV cache within the
    margin a plan keeps, --enforce-eager is tried as for a context that misses by more."""
    refused = None
    for n in range(8192, 131072 + 1, 2048):
        r = plan(load_preset(gpu), CAT, PlanRequest(model=model, precision=precision, kv_cache_dtype="auto",
                                                    max_model_len=n))
        c = next(x for x in r.candidates if x.variant.precision == precision)
        if c.fits == "no":
            refused = refused or n
        else:
            assert refused is None, f"{n:,} fits after {refused:,} did not ({c.reasons[0]})"
