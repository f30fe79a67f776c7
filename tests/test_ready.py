"""Readiness decisions with a fake clock (the real engine is in tests/integration)."""

from __future__ import annotations

from kanoa_local.engine.ready import wait_until_ready


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def feed(batches):
    it = iter(batches)
    return lambda: next(it, [])


def test_ready_after_stages_and_first_token():
    c = Clock()
    lines = feed([["INFO non-default args: {...}"], ["Loading weights took 0.5 seconds"],
                  ["CPU KV cache size: 40,810 tokens, Maximum concurrency for 4,096 tokens per request: 9.96x"],
                  ["INFO:     Application startup complete."]])
    tokens = iter([False, True])
    r = wait_until_ready(read_lines=lines, alive=lambda: True, probe=lambda: next(tokens), clock=c, sleep=c.sleep)
    assert r.outcome == "ready"
    assert [s.stage for s in r.stages] == ["engine starting", "weights loaded", "KV cache sized",
                                          "serving", "first token"]
    assert r.figures.kv_tokens == 40810 and r.diagnosis is None


def test_exit_is_diagnosed_from_the_log():
    c = Clock()
    lines = feed([["ValueError: ... the estimated maximum model length is 43520. Try ..."]])
    r = wait_until_ready(read_lines=lines, alive=lambda: False, probe=lambda: False, clock=c, sleep=c.sleep,
                         exit_info=lambda: {"exit_code": 0})
    assert r.outcome == "exited" and r.diagnosis.retry_max_model_len == 43520


def test_stall_resets_on_progress_and_then_fires():
    c = Clock()
    batches = [["non-default args"]] + [[] for _ in range(50)] + [["Loading weights took 1 s"]]
    r = wait_until_ready(read_lines=feed(batches), alive=lambda: True, probe=lambda: False,
                         clock=c, sleep=c.sleep, stall=60, timeout=10_000)
    assert r.outcome == "stalled"
    assert r.elapsed_s > 100           # 50 s quiet, progress, then 60 s more
    assert r.diagnosis.kind == "stalled" and "weights loaded" in r.diagnosis.cause


def test_timeout():
    c = Clock()
    n = iter(range(10**6))
    r = wait_until_ready(read_lines=lambda: [f"line {next(n)}"], alive=lambda: True, probe=lambda: False,
                         clock=c, sleep=c.sleep, timeout=30, stall=10)
    assert r.outcome == "timeout"


def test_next_attempt_shrinks_context_once_then_falls_back_a_plan():
    from kanoa_local.catalog import load_catalog
    from kanoa_local.deploy import next_attempt
    from kanoa_local.engine.diagnose import Diagnosis
    from kanoa_local.plan import PlanRequest, plan
    from kanoa_local.probe import load_preset

    r = plan(load_preset("l4"), load_catalog(user=False), PlanRequest(model="qwen2.5-vl-7b"))
    first = r.chosen
    smaller = [c for c in r.candidates if c.fits != "no" and c is not first]
    too_long = Diagnosis(kind="max-model-len-too-large", cause="", remedy="", retry_max_model_len=9000)
    nxt, note = next_attempt(too_long, first, smaller, shrunk=False)
    assert nxt.variant.key == first.variant.key and nxt.settings.max_model_len == 8960 and "8960" in note
    # vLLM's figure did not hold: a release that fits the context itself is asked to
    auto, note_auto = next_attempt(too_long, nxt, smaller, shrunk=True)
    assert auto.variant.key == first.variant.key and auto.settings.auto_context and "--max-model-len auto" in note_auto
    from kanoa_local.engine.spec import vllm_args

    argv = vllm_args(auto, model_ref="m", served_name="x", host="127.0.0.1", port=8000)
    assert argv[argv.index("--max-model-len") + 1] == "auto"
    nxt2, note2 = next_attempt(too_long, auto, smaller, shrunk=True)     # that too: a plan down
    assert nxt2 is smaller[0] and "fell back" in note2
    # an image before 0.14 has no auto-fit: straight to the plan down
    old = nxt.model_copy(update={"settings": nxt.settings.model_copy(update={"vllm_version": "0.10.2"})})
    assert next_attempt(too_long, old, smaller, shrunk=True)[0] is smaller[0]
    # no figure from vLLM at all: auto first
    bare = too_long.model_copy(update={"retry_max_model_len": None})
    assert next_attempt(bare, first, smaller, shrunk=False)[0].settings.auto_context
    oom = Diagnosis(kind="cuda-oom", cause="", remedy="")
    assert next_attempt(oom, first, [], shrunk=False) == (None, "")
    other = Diagnosis(kind="gated-no-token", cause="", remedy="")
    assert next_attempt(other, first, smaller, shrunk=False)[0] is None


def test_what_vllm_says_would_work_is_retried_once_each():
    """Free GPU memory below the planned share: the share that was free; a P2P failure at TP > 1:
    NCCL_P2P_DISABLE=1 in the engine's environment. Each once; never below a useful share."""
    from kanoa_local.catalog import load_catalog
    from kanoa_local.deploy import next_attempt
    from kanoa_local.engine.diagnose import diagnose
    from kanoa_local.engine.spec import launch_spec
    from kanoa_local.plan import PlanRequest, plan
    from kanoa_local.probe import load_preset

    first = plan(load_preset("l4"), load_catalog(user=False), PlanRequest(model="qwen2.5-vl-7b")).chosen
    busy = diagnose("ValueError: Free memory on device (15.1/22.05 GiB) on startup is less than desired GPU "
                    "memory utilization (0.92, 20.29 GiB). Decrease GPU memory utilization or reduce GPU "
                    "memory used by other processes.")
    assert busy.kind == "gpu-memory-busy" and busy.retry_gpu_memory_utilization == 0.65
    nxt, note = next_attempt(busy, first, [], shrunk=False)
    assert nxt.settings.gpu_memory_utilization == 0.65 and "0.65" in note
    assert next_attempt(busy, nxt, [], shrunk=False, done=frozenset({"gpu-memory-busy"}))[0] is None
    low = busy.model_copy(update={"retry_gpu_memory_utilization": 0.2})
    assert next_attempt(low, first, [], shrunk=False)[0] is None

    tp2 = plan(load_preset("2x-rtx4090"), load_catalog(user=False), PlanRequest(model="llama-3.1-70b")).chosen
    assert tp2.settings.tensor_parallel_size == 2
    p2p = diagnose("RuntimeError: CUDA error: peer access is not supported between these two devices")
    nxt, note = next_attempt(p2p, tp2, [], shrunk=False)
    assert nxt.settings.engine_env == {"NCCL_P2P_DISABLE": "1"} and "NCCL_P2P_DISABLE=1" in note
    assert launch_spec(nxt).env["NCCL_P2P_DISABLE"] == "1"
    assert next_attempt(p2p, nxt, [], shrunk=False, done=frozenset({"nccl-p2p"}))[0] is None
    assert next_attempt(p2p, first, [], shrunk=False)[0] is None           # one GPU: nothing to disable


def test_last_stage_is_the_furthest_the_log_reached():
    from kanoa_local.engine.ready import last_stage

    assert last_stage([]) is None
    log = ["INFO non-default args: {...}", "INFO Starting to load model /model...",
           "INFO Loading weights took 0.52 seconds", "INFO GPU KV cache size: 43,520 tokens"]
    assert last_stage(log) == "KV cache sized"
    assert last_stage(log[:2]) == "loading weights"


def test_lines_come_out_whole_across_pieces():
    from kanoa_local.engine.lines import LineSplitter, lines_of

    text = "INFO ready\r\nGPU KV cache size: 1 token · ok\nlast".encode()
    cut = text.index("·".encode()) + 1                # inside the two bytes of '·'
    pieces = [text[:5], text[5:cut], text[cut:]]
    assert list(lines_of(pieces)) == ["INFO ready", "GPU KV cache size: 1 token · ok", "last"]
    s = LineSplitter()
    assert s.feed(b"par") == [] and s.feed("tial\nnext") == ["partial"] and s.rest() == ["next"] and s.rest() == []


# TheBuccaneer/vllm-offload-profiles, data/provenance/gpu_memory_configuration/
# fixd_llama_gmem090_offload0_failed.log (vLLM 0.17.1, one RTX 3090, Llama 3.1 8B at 0.9)
SAMPLER_OOM_LOG = """\
(EngineCore_DP0 pid=44265) INFO 07-26 10:24:16 [gpu_model_runner.py:4364] Model loading took 14.99 GiB memory and 18.543273 seconds
(EngineCore_DP0 pid=44265) INFO 07-26 10:24:21 [gpu_worker.py:424] Available KV cache memory: 5.61 GiB
(EngineCore_DP0 pid=44265) INFO 07-26 10:24:21 [kv_cache_utils.py:1314] GPU KV cache size: 45,968 tokens
(EngineCore_DP0 pid=44265) ERROR 07-26 10:24:28 [core.py:1100] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 126.00 MiB. GPU 0 has a total capacity of 23.54 GiB of which 139.75 MiB is free. Including non-PyTorch memory, this process has 21.72 GiB memory in use.
(EngineCore_DP0 pid=44265) ERROR 07-26 10:24:28 [core.py:1100] RuntimeError: CUDA out of memory occurred when warming up sampler with 256 dummy requests. Please try lowering `max_num_seqs` or `gpu_memory_utilization` when initializing the engine.
"""


def test_an_oom_beside_the_kv_cache_is_retried_with_a_smaller_absolute_kv_cache():
    """vLLM sized its KV cache, then ran out of memory warming its sampler up (a public 0.17.1 log):
    the same plan again with --kv-cache-memory-bytes a GiB (and what the allocation lacked) below
    the KV cache it had sized, which vLLM takes without profiling (0.10.2 on); once; the plan down
    after that, and on older releases."""
    from kanoa_local.catalog import load_catalog
    from kanoa_local.deploy import next_attempt
    from kanoa_local.engine.diagnose import diagnose
    from kanoa_local.engine.spec import vllm_args
    from kanoa_local.plan import PlanRequest, plan
    from kanoa_local.probe import load_preset

    d = diagnose(SAMPLER_OOM_LOG)
    assert d.kind == "cuda-oom-after-kv" and "5.61 GiB" in d.cause and "warming up" in d.cause
    assert d.retry_kv_cache_bytes == int(5.61 * 2**30 - 2**30)        # 139.75 MiB was free for 126
    r = plan(load_preset("rtx3090"), load_catalog(user=False),
             PlanRequest(model="llama-3.1-8b", precision="bf16", max_model_len=8192, vllm_version="0.17"))
    first = r.chosen
    smaller = [c for c in r.candidates if c.fits != "no" and c is not first]
    nxt, note = next_attempt(d, first, smaller, shrunk=False)
    assert nxt is not None and nxt.variant.key == first.variant.key and nxt.settings.max_model_len == 8192
    argv = vllm_args(nxt, model_ref="m", served_name="x", host="127.0.0.1", port=8000)
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(d.retry_kv_cache_bytes)
    assert "--kv-cache-memory-bytes" in note and "4.61 GiB" in note
    # once: the same failure again goes to the plan down
    again, _ = next_attempt(d, nxt, smaller, shrunk=False, done=frozenset({"cuda-oom-after-kv"}))
    assert again is smaller[0]
    # a release without the flag: the plan down straight away
    old = first.model_copy(update={"settings": first.settings.model_copy(update={"vllm_version": "0.10.1"})})
    assert next_attempt(d, old, smaller, shrunk=False)[0] is smaller[0]
    # an OOM before the KV cache was sized (loading, profiling) is the plain kind
    assert diagnose(SAMPLER_OOM_LOG.split("\n", 1)[0] + "\ntorch.OutOfMemoryError: CUDA out of memory.").kind == "cuda-oom"
