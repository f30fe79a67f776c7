"""Real numbers from checkpoint files: config.json and safetensors headers (no torch needed)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from kanoa_local.catalog import Catalog, ModelEntry, Variant, load_catalog
from kanoa_local.checkpoint import arch_from_config, enrich, read_checkpoint, read_header
from kanoa_local.plan import PlanRequest, plan
from kanoa_local.probe import load_preset
from tests.conftest import run_cli

BYTES = {"BF16": 2, "F32": 4, "I32": 4, "F16": 2}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A valid safetensors file (header + zero-filled data) with the given dtypes and shapes."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = BYTES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


def test_header_split_into_quantised_embeddings_vision(tmp_path):
    f = tmp_path / "model.safetensors"
    write_safetensors(f, {
        "model.embed_tokens.weight": ("BF16", [1000, 64]),
        "lm_head.weight": ("BF16", [1000, 64]),
        "model.layers.0.mlp.down_proj.qweight": ("I32", [64, 16]),
        "model.layers.0.mlp.down_proj.scales": ("F16", [1, 128]),
        "model.layers.0.input_layernorm.weight": ("BF16", [64]),
        "visual.blocks.0.attn.qkv.weight": ("F32", [192, 64]),
    })
    assert "lm_head.weight" in read_header(f)
    _, w = read_checkpoint(tmp_path, compute_bytes=2)
    assert w is not None and w.source == "checkpoint"
    assert w.embeddings == 2 * 1000 * 64 * 2
    assert w.quantised == 64 * 16 * 4 + 128 * 2     # packed ints as stored, scales at compute bytes
    assert w.vision == 192 * 64 * 2                  # an fp32 tower loads in the compute dtype
    assert w.unquantised == 64 * 2


def test_config_with_nested_text_config_and_layer_types():
    cfg = {"model_type": "gemma3", "vision_config": {"hidden_size": 1152},
           "text_config": {"num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 1,
                           "head_dim": 256, "hidden_size": 640, "vocab_size": 262144,
                           "max_position_embeddings": 32768, "sliding_window": 512,
                           "layer_types": ["sliding_attention"] * 5 + ["full_attention"]}}
    a = arch_from_config(cfg)
    assert (a.layers, a.kv_heads, a.head_dim, a.sliding_layers, a.sliding_window) == (6, 1, 256, 5, 512)
    # Qwen2-style: a window is configured but switched off
    q = arch_from_config({"num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
                          "hidden_size": 512, "vocab_size": 1000, "max_position_embeddings": 32768,
                          "sliding_window": 4096, "use_sliding_window": False})
    assert q.sliding_layers == 0 and q.sliding_window is None and q.head_dim == 64


def test_enrich_uses_a_local_checkpoint_and_the_planner_reads_its_weights(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 256,
        "vocab_size": 1000, "max_position_embeddings": 8192, "intermediate_size": 512}))
    write_safetensors(d / "model.safetensors", {"model.embed_tokens.weight": ("BF16", [1000, 256]),
                                                "model.layers.0.mlp.up_proj.weight": ("BF16", [512, 256])})
    entry = ModelEntry(id="mine", name="Mine", family="llama", params_b=9.0, vision=False,
                       status="theoretical", variants=[Variant(precision="bf16", path=str(d))])
    cat, weights = enrich(Catalog(models={"mine": entry}))
    assert cat.models["mine"].arch.source == "config.json"
    w = weights[("mine", str(d))]
    assert w.total == (1000 * 256 + 512 * 256) * 2
    r = plan(load_preset("l4"), cat, PlanRequest(model="mine"), checkpoints=weights)
    assert r.chosen is not None
    assert r.chosen.memory.weights.source == "checkpoint"     # not 9 B × 2 bytes from the table


def test_bundled_catalog_is_unchanged_without_local_files(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    cat = load_catalog(user=False)
    enriched, weights = enrich(cat)
    assert weights == {} and enriched.models["qwen3-vl-4b"].arch == cat.models["qwen3-vl-4b"].arch


def test_a_repo_in_the_hugging_face_cache_is_read_and_marked_cached(tmp_path):
    """The real cache layout (models--org--name/refs/main → snapshots/<commit>/)."""
    repo = tmp_path / "hub" / "models--Qwen--Qwen3-VL-4B-Instruct"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snap / "config.json").write_text(json.dumps({
        "model_type": "qwen3_vl", "text_config": {
            "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128, "hidden_size": 2560, "vocab_size": 151936,
            "max_position_embeddings": 262144, "tie_word_embeddings": True}}))
    cat, _ = enrich(load_catalog(user=False), hf_cache=tmp_path / "hub")
    entry = cat.get("qwen3-vl-4b")
    bf16 = next(v for v in entry.variants if v.repo == "Qwen/Qwen3-VL-4B-Instruct")
    assert bf16.cached and bf16.local
    assert entry.arch.source == "config.json" and entry.arch.vision_params_b > 0   # kept from the table
    # offline planning may use it now
    r = plan(load_preset("l4"), cat, PlanRequest(model="qwen3-vl-4b", offline=True))
    assert r.chosen is not None and r.chosen.variant.repo == "Qwen/Qwen3-VL-4B-Instruct"


def _fake_repo(hub: Path, repo: str, files: dict[str, str | bytes]) -> Path:
    d = hub / ("models--" + repo.replace("/", "--"))
    snap = d / "snapshots" / "c0ffee"
    snap.mkdir(parents=True)
    (d / "refs").mkdir()
    (d / "refs" / "main").write_text("c0ffee")
    for name, text in files.items():
        (snap / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return snap


def _shard() -> bytes:
    """A whole (tiny) safetensors file."""
    import struct

    header = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 4


def test_offline_download_checks_the_cache_is_complete(tmp_path):
    import pytest

    from kanoa_local.hub import download
    from kanoa_local.errors import ConfigError

    hub = tmp_path / "hub"
    index = json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                       "b": "model-00002-of-00002.safetensors"}})
    snap = _fake_repo(hub, "org/complete", {"config.json": "{}", "model.safetensors.index.json": index,
                                            "model-00001-of-00002.safetensors": _shard(),
                                            "model-00002-of-00002.safetensors": _shard()})
    assert download("org/complete", offline=True, hf_cache=hub) == snap
    _fake_repo(hub, "org/partial", {"config.json": "{}", "model.safetensors.index.json": index,
                                    "model-00001-of-00002.safetensors": _shard()})
    with pytest.raises(ConfigError) as e:
        download("org/partial", offline=True, hf_cache=hub)
    assert "model-00002-of-00002.safetensors" in str(e.value)
    # a cached shard that is not one (an interrupted copy): said before the engine reads it
    _fake_repo(hub, "org/damaged", {"config.json": "{}", "model.safetensors": _shard()[:-2]})
    with pytest.raises(ConfigError) as e:
        download("org/damaged", offline=True, hf_cache=hub)
    assert "damaged weights" in str(e.value) and "truncated" in str(e.value)
    with pytest.raises(ConfigError) as e:
        download("org/absent", offline=True, hf_cache=hub)
    assert "not in the Hugging Face cache" in str(e.value)


def test_online_download_failure_is_one_line(tmp_path):
    """A real request: no such repo (or, on these machines, no hub at all) → one EngineError."""
    import pytest

    from kanoa_local.hub import download
    from kanoa_local.errors import EngineError

    with pytest.raises(EngineError) as e:
        download("kanoa-local-tests/no-such-repo-3f9a", hf_cache=tmp_path / "hub")
    assert "\n" not in str(e.value) and e.value.remedy


def test_the_hub_cache_is_huggingface_hubs_own_answer(tmp_path):
    """HF_HOME, the newer HF_HUB_CACHE and the older HUGGINGFACE_HUB_CACHE, as huggingface_hub
    reads them at import (a fresh interpreter each): where its downloads go is where kanoa-local
    looks, mounts and measures the disk."""
    import subprocess
    import sys

    code = "from kanoa_local.hub import cache_dir, engine_caches; print(cache_dir()); print(engine_caches()['hf_cache'])"
    cases = [({"HF_HOME": str(tmp_path / "home")}, tmp_path / "home" / "hub"),
             ({"HF_HOME": str(tmp_path / "home"), "HF_HUB_CACHE": str(tmp_path / "models")}, tmp_path / "models"),
             ({"HUGGINGFACE_HUB_CACHE": str(tmp_path / "legacy")}, tmp_path / "legacy")]
    for extra, want in cases:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                             check=True).stdout.split()
        assert out == [str(want), str(want)], extra


TINY_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 512, "intermediate_size": 1408,
              "vocab_size": 32000, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}


def test_a_hub_repo_the_catalog_does_not_list_is_planned_from_its_cached_snapshot(tmp_path):
    """`plan owner/name` for a repo outside the matrix, offline: its cached config.json and
    safetensors headers are the entry (exact weights), named after the repo, served from the
    repo id (not the snapshot path)."""
    from kanoa_local.engine.spec import PlanReport

    hub = tmp_path / "hub"
    snap = hub / "models--someone--tiny-llama" / "snapshots" / "c0ffee"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("c0ffee")
    (snap / "config.json").write_text(json.dumps(TINY_LLAMA))
    write_safetensors(snap / "model.safetensors", {
        "model.embed_tokens.weight": ("BF16", [32000, 512]), "lm_head.weight": ("BF16", [32000, 512]),
        "model.layers.0.mlp.down_proj.weight": ("BF16", [512, 1408])})
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    r = run_cli("plan", "someone/tiny-llama", "--gpu", "l4", "--json", env=env)
    assert r.returncode == 0, r.stderr
    c = PlanReport.model_validate_json(r.stdout).plan.chosen
    assert c.model_id == "tiny-llama" and c.variant.repo == "someone/tiny-llama" and c.variant.cached
    assert c.memory.weights.source == "checkpoint"
    assert c.memory.weights.embeddings == 2 * 32000 * 512 * 2
    # not cached, offline: the catalog's "unknown model", and how to get it
    r = run_cli("plan", "someone/not-here", "--gpu", "l4", env=env)
    assert r.returncode == 2 and r.stderr.startswith("Error: unknown model 'someone/not-here'"), r.stderr
    assert "kanoa-local pull" in r.stderr and "Traceback" not in r.stderr


def test_a_hub_that_does_not_answer_is_one_line(tmp_path):
    """Online, a repo outside the matrix is read from the hub; a hub that refuses the connection
    (HF_ENDPOINT on a port nothing listens on: a real refused connection) is one line of cause and
    remedy, no traceback."""
    from tests.conftest import free_port

    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "0",
           "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_ETAG_TIMEOUT": "5",
           "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    r = run_cli("plan", "someone/tiny-llama", "--gpu", "l4", env=env, timeout=180)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    first = r.stderr.strip().splitlines()[0]
    assert first.startswith("Error: cannot read someone/tiny-llama"), r.stderr
    assert "HF_ENDPOINT" in r.stderr


def test_the_precision_a_quantization_config_names():
    from kanoa_local.unlisted import checkpoint_precision
    from kanoa_local.errors import ConfigError

    def ct(bits: int, kind: str) -> dict:
        return {"quant_method": "compressed-tensors",
                "config_groups": {"group_0": {"weights": {"num_bits": bits, "type": kind}}}}

    assert checkpoint_precision({}) == "bf16"
    assert checkpoint_precision(ct(8, "float")) == "fp8"
    assert checkpoint_precision(ct(8, "int")) == "int8"
    assert checkpoint_precision(ct(4, "int")) == "w4a16"
    assert checkpoint_precision({"quant_method": "awq", "bits": 4}) == "awq"
    assert checkpoint_precision({"quant_method": "bitsandbytes", "load_in_4bit": True}) == "bnb-4bit"
    with pytest.raises(ConfigError, match="mxfp4"):
        checkpoint_precision({"quant_method": "mxfp4"})


def test_the_remote_code_files_auto_map_names():
    """A model's module, a tokenizer's [slow, fast] pair, and another repo's module."""
    from kanoa_local.unlisted import auto_map_files

    cfg = {"auto_map": {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM",
                        "AutoTokenizer": ["tokenization_x.XTokenizer", "tokenization_x_fast.XTokenizerFast"],
                        "AutoProcessor": "owner/other--processing_y.YProcessor"}}
    assert auto_map_files(cfg) == ["configuration_x.py", "modeling_x.py", "owner/other:processing_y.py",
                                   "tokenization_x.py", "tokenization_x_fast.py"]
    assert auto_map_files({}) == [] and auto_map_files({"auto_map": "bad"}) == []
