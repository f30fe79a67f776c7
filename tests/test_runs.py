"""Run records: what the engine reported after a good `up` labels the next plan of the same
model, precision, GPU and release *measured*, and `models` says where it was verified."""

from __future__ import annotations

import json

from kanoa_local import runs
from kanoa_local.catalog import load_catalog
from kanoa_local.engine.vllm_log import StartupFigures
from kanoa_local.plan import PlanRequest, plan
from kanoa_local.probe import load_preset
from tests.conftest import run_cli

CAT = load_catalog(user=False)


def test_a_recorded_run_labels_the_same_plan_measured_and_no_other():
    prof = load_preset("l4")
    c = plan(prof, CAT, PlanRequest(model="llama-3.1-8b")).chosen
    assert c.confidence == {"weights": "derived", "kv_cache": "derived"} and c.measured is None
    path = runs.record(c, StartupFigures(weights_gib=8.49, kv_avail_gib=9.1, kv_tokens=74528))
    assert path is not None and oct(path.stat().st_mode & 0o777) == "0o600"
    again = plan(prof, CAT, PlanRequest(model="llama-3.1-8b"), runs=runs.load_all()).chosen
    assert again.confidence == {"weights": "measured", "kv_cache": "measured"}
    assert again.measured["kv_tokens"] == 74528 and again.measured["max_model_len"] == c.settings.max_model_len
    # another release's image, another GPU: not measured
    old = plan(prof, CAT, PlanRequest(model="llama-3.1-8b", vllm_version="0.19"), runs=runs.load_all()).chosen
    assert old.measured is None
    other = plan(load_preset("h100"), CAT, PlanRequest(model="llama-3.1-8b"), runs=runs.load_all()).chosen
    assert other.measured is None


def test_the_cli_shows_it_and_damaged_records_are_skipped():
    prof = load_preset("l4")
    c = plan(prof, CAT, PlanRequest(model="llama-3.1-8b")).chosen
    runs.record(c, StartupFigures(weights_gib=8.49, kv_tokens=74528))
    (runs.runs_dir() / "broken.json").write_text("{not json")
    r = run_cli("plan", "llama-3.1-8b", "--gpu", "l4")
    assert r.returncode == 0 and "measured" in r.stdout and "74,528 tokens" in r.stdout, r.stdout
    m = json.loads(run_cli("models", "--gpu", "l4", "--json").stdout)
    row = next(x for x in m["models"] if x["id"] == "llama-3.1-8b")
    assert row["verified_on"] == ["NVIDIA L4"]
    assert "verified on NVIDIA L4" in run_cli("models", "--gpu", "l4").stdout


def test_nothing_reported_means_no_record():
    c = plan(load_preset("l4"), CAT, PlanRequest(model="llama-3.1-8b")).chosen
    assert runs.record(c, StartupFigures()) is None and runs.load_all() == []


def test_a_run_of_the_same_configuration_corrects_the_next_plan():
    """What vLLM's own profile left for the KV cache replaces the estimate when the next plan is
    the configuration that ran (same GPU, release, parallelism, sequences, images): here the
    engine left 2 GiB less than planned, so the next plan has that much less KV cache and a
    shorter longest context; another --max-num-seqs is another profile and is not corrected."""
    from kanoa_local.hardware import GIB

    prof = load_preset("l4")
    c = plan(prof, CAT, PlanRequest(model="llama-3.1-8b")).chosen
    seen = c.memory.kv_bytes / GIB - 2
    runs.record(c, StartupFigures(weights_gib=8.49, kv_avail_gib=seen, kv_tokens=int(seen * GIB / 131072)))
    def same(result):
        return next(x for x in result.candidates if x.label == c.label and x.settings)

    again = same(plan(prof, CAT, PlanRequest(model="llama-3.1-8b"), runs=runs.load_all()))
    assert abs(again.memory.kv_bytes / GIB - seen) < 0.01
    assert any(t.name == "measured" and abs(t.bytes / GIB - 2) < 0.01 for t in again.memory.terms)
    assert again.memory.largest_context < c.memory.largest_context
    other = same(plan(prof, CAT, PlanRequest(model="llama-3.1-8b", max_num_seqs=8), runs=runs.load_all()))
    assert not any(t.name == "measured" for t in other.memory.terms)
    # an engine that left almost nothing: that configuration no longer fits as asked, not even
    # without the CUDA graphs the engine had captured
    runs.record(c, StartupFigures(kv_avail_gib=0.05, kv_tokens=400))
    asked = PlanRequest(model="llama-3.1-8b", precision=c.variant.precision, max_model_len=32768,
                        kv_cache_dtype=c.settings.kv_cache_dtype, gpu_memory_utilization=c.settings.gpu_memory_utilization)
    assert plan(prof, CAT, asked).chosen is not None
    tight = plan(prof, CAT, asked, runs=runs.load_all())
    mine = [x for x in tight.candidates if x.label == c.label]
    assert mine and all(x.fits == "no" for x in mine), [(x.label, x.fits) for x in mine]


def test_a_vision_run_corrects_only_plans_that_profile_the_same_videos():
    """A record from before kanoa-local named videos ran with vLLM's 999 (a dummy video in its
    profile): it does not correct a plan that passes "video": 0, and a record that did does."""
    from kanoa_local.plan.confidence import measured_run

    prof = load_preset("l4")
    c = plan(prof, CAT, PlanRequest(model="qwen2.5-vl-7b")).chosen
    assert c.settings.limit_videos == 0
    runs.record(c, StartupFigures(weights_gib=6.5, kv_avail_gib=4.0, kv_tokens=70000))
    (rec,) = [r for r in runs.load_all() if r.model_id == "qwen2.5-vl-7b"]
    key = dict(tp=1, pp=1, max_num_seqs=c.settings.max_num_seqs, limit_images=c.settings.limit_images)
    args = (rec.model_id, rec.precision, rec.gpu, rec.vllm_version)
    assert measured_run([rec], *args, **key, limit_videos=0) is rec
    old = rec.model_copy(update={"limit_videos": None})
    assert old.videos == 999 and measured_run([old], *args, **key, limit_videos=0) is None
