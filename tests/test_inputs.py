"""Every value a user can type or put in a file is checked where it enters: one line naming the
option or file and key, exit 2 (an option) or 3 (a file), never an internal error (issue 14)."""

from __future__ import annotations

import json

import pytest

from kanoa_local.probe import load_preset
from tests.conftest import run_cli


def _one_line(r, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) <= 2, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "NaN"])
def test_a_number_option_must_be_finite(value):
    _one_line(run_cli("plan", "--vram", value), 2, "--vram")
    _one_line(run_cli("up", "--gpu-memory-utilization", value, "--cpu"), 2, "--gpu-memory-utilization")
    _one_line(run_cli("up", "--temperature", value, "--cpu"), 2, "--temperature")


def test_a_profile_nested_too_deeply_or_with_impossible_figures(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    _one_line(run_cli("check", "--hardware", str(deep)), 3, "deep.json", "nested too deeply")
    deep.write_text('{"kind": "kanoa-local.hardware-profile", "x": ' + "{\"a\": " * 50_000 + "1" + "}" * 50_001)
    _one_line(run_cli("check", "--hardware", str(deep)), 3, "deep.json")
    base = load_preset("l4").model_dump(mode="json")
    for key, bad in (("ram_total", -5), ("ram_available", -1), ("disk_free", -1)):
        f = tmp_path / f"{key}.json"
        f.write_text(json.dumps({**base, key: bad}))
        _one_line(run_cli("check", "--hardware", str(f)), 3, key)
    gpu = dict(base["gpus"][0], memory_total=-1)
    f = tmp_path / "gpu.json"
    f.write_text(json.dumps({**base, "gpus": [gpu]}))
    _one_line(run_cli("plan", "--hardware", str(f)), 3, "memory_total")
    f.write_text(json.dumps({**base, "cpu": {"count": 0}}))
    _one_line(run_cli("plan", "--hardware", str(f)), 3, "cpu.count")


MODELS = """
[models.mine]
name = "Mine"
family = "llama"
params_b = 1.0
vision = false
status = "theoretical"
{extra}
variants = [{{ precision = "awq", repo = "me/mine"{variant} }}]
[models.mine.arch]
layers = 2
heads = 2
kv_heads = 2
head_dim = 64
hidden = 128
vocab = 1000
max_context = 4096
"""


@pytest.mark.parametrize("extra,variant,needle", [
    ("seed_vram_gb = -3", "", "seed_vram_gb"),
    ("seed_vram_gb = nan", "", "seed_vram_gb"),
    ("params_b = inf", "", "params_b"),
    ("", ', quantization = "awqq"', "did you mean 'awq'"),
    ("", ', quantization = "fp9"', "not a vLLM --quantization method"),
    ("", ", size_gb = -1", "size_gb"),
    ('tested = [{ hardware = "L4", precision = "awq", vram_gb = -2, status = "verified" }]', "", "vram_gb"),
])
def test_a_user_models_file_with_a_bad_value(tmp_path, extra, variant, needle):
    f = tmp_path / "models.toml"
    text = MODELS.format(extra=extra, variant=variant)
    if extra.startswith("params_b"):
        text = text.replace("params_b = 1.0\n", "")
    f.write_text(text)
    for cmd in (("models",), ("plan", "mine")):
        _one_line(run_cli(*cmd, "--models", str(f)), 3, "models.toml", needle)


def test_the_good_file_is_accepted(tmp_path):
    f = tmp_path / "models.toml"
    f.write_text(MODELS.format(extra="seed_vram_gb = 3", variant=', quantization = "awq"'))
    r = run_cli("models", "--models", str(f), "--json")
    assert r.returncode == 0, r.stderr


def test_a_gated_model_without_a_token_says_which_and_how():
    r = run_cli("up", "gemma-3-12b", "--gpu", "h100", "--quant", "bf16", env={"HF_HUB_OFFLINE": "0"})
    _one_line(r, 9, "google/gemma-3-12b-it is gated", "HF_TOKEN", "huggingface.co/google/gemma-3-12b-it")
    plan = run_cli("plan", "gemma-3-12b", "--gpu", "h100", "--quant", "bf16")
    assert "is gated" in plan.stdout


def test_offline_and_not_downloaded_is_not_does_not_fit():
    r = run_cli("up", "llama-3.1-8b", "--gpu", "l4", "--offline")
    _one_line(r, 9, "not downloaded", "kanoa-local pull llama-3.1-8b")
    assert "does not fit" not in r.stderr
    plan = run_cli("plan", "llama-3.1-8b", "--gpu", "l4", "--offline", "--json")
    assert plan.returncode == 9 and "not downloaded" in json.loads(plan.stdout)["plan"]["summary"]


def _checkpoint(folder, weights: bytes) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 128,
        "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 256, "vocab_size": 1000,
        "max_position_embeddings": 2048, "torch_dtype": "bfloat16"}))
    (folder / "model.safetensors").write_bytes(weights)


def _safetensors(n_bytes_of_data: int, truncate: int = 0) -> bytes:
    import struct

    header = json.dumps({"w": {"dtype": "BF16", "shape": [n_bytes_of_data // 2], "data_offsets": [0, n_bytes_of_data]}})
    data = struct.pack("<Q", len(header)) + header.encode() + b"\0" * n_bytes_of_data
    return data[:len(data) - truncate]


@pytest.mark.parametrize("weights,needle", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
    (_safetensors(4096, truncate=1000), "truncated"),
    (b"\xff" * 64, "not a readable safetensors file"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}", "not a readable safetensors file"),
])
def test_a_damaged_local_checkpoint_is_refused_before_anything_starts(tmp_path, weights, needle):
    ck = tmp_path / "ckpt"
    _checkpoint(ck, weights)
    _one_line(run_cli("plan", str(ck)), 3, "damaged weights", "model.safetensors", needle)
    r = run_cli("up", "--model-path", str(ck), "--cpu", "--name", "bad")
    _one_line(r, 3, "damaged weights", needle)
    assert json.loads(run_cli("ps", "--json").stdout)["deployments"] == []


def test_a_whole_checkpoint_passes_the_check(tmp_path):
    from kanoa_local.checkpoint import damaged_shards

    ck = tmp_path / "ckpt"
    _checkpoint(ck, _safetensors(4096))
    assert damaged_shards(ck) == []
