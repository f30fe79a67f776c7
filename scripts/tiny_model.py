"""Generate a tiny chat model offline: random (seeded) weights of a standard architecture,
a BPE tokenizer trained on the spot, a chat template, config.json + safetensors.

Runs with an interpreter that has torch, safetensors and tokenizers (the vLLM CPU venv does).
The output is cached by content: the directory name carries a hash of this script and the
shape, and a finished directory is reused. Prints the model directory on stdout.

    python scripts/tiny_model.py [--layers 2 --kv-heads 1 --heads 2 --head-dim 64 ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Words a data-science interpreter talks about, so the trained tokenizer has real subwords.
CORPUS_WORDS = """the a of and to in is that for it as with was on are by this be from at or
data frame column row mean median value values table chart plot figure axis trend growth sales
revenue region month year quarter total average increase decrease correlation outlier sample
distribution model analysis result results interpret summary statistics count sum max min std
north south east west january february march april may june higher lower than more less shows
user assistant system question answer please explain what why how which there these those
""".split()

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('\\n') %}{% endif %}"
    "<|{{ message['role'] }}|>\\n{{ text }}</s>\\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\\n{% endif %}"
)


def corpus(seed: int, lines: int = 4000) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(5, 20)))
            + rng.choice([".", "?", "!", ","]) + f" {rng.randint(0, 9999)}"
            for _ in range(lines)]


def train_tokenizer(out: Path, vocab_size: int, seed: int) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "</s>", "model_max_length": 1 << 20,
        "add_bos_token": False, "chat_template": CHAT_TEMPLATE}, indent=1))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}))
    return tok.get_vocab_size()


def write_model(out: Path, a: argparse.Namespace, vocab: int, eos_id: int, bos_id: int) -> None:
    import torch
    from safetensors.torch import save_file

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[a.dtype]
    g = torch.Generator().manual_seed(a.seed)
    h, inter, hd = a.hidden, a.intermediate, a.head_dim

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(dtype)

    tensors = {"model.embed_tokens.weight": w(vocab, h), "model.norm.weight": torch.ones(h, dtype=dtype)}
    if not a.tie:
        tensors["lm_head.weight"] = w(vocab, h)
    for i in range(a.layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": w(a.heads * hd, h),
            p + "self_attn.k_proj.weight": w(a.kv_heads * hd, h),
            p + "self_attn.v_proj.weight": w(a.kv_heads * hd, h),
            p + "self_attn.o_proj.weight": w(h, a.heads * hd),
            p + "mlp.gate_proj.weight": w(inter, h),
            p + "mlp.up_proj.weight": w(inter, h),
            p + "mlp.down_proj.weight": w(h, inter),
            p + "input_layernorm.weight": torch.ones(h, dtype=dtype),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=dtype),
        })
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": h, "intermediate_size": inter, "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads, "head_dim": hd,
        "vocab_size": vocab, "max_position_embeddings": a.max_len, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": a.tie,
        "torch_dtype": a.dtype, "bos_token_id": bos_id, "eos_token_id": eos_id,
        "attention_bias": False, "mlp_bias": False,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False}))


def publish(final: Path, key: str, build) -> Path:
    """Build into a temp dir beside ``final`` and move it into place, marked complete; a
    finished ``final`` is reused. A crash leaves no half-written model behind."""
    if (final / ".complete").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text(key)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--intermediate", type=int, default=256)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--kv-heads", type=int, default=1)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--tie", action="store_true", help="tie the embeddings and lm_head")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--name", default="tiny-llama")
    ap.add_argument("--out-root", default=os.environ.get("KANOA_TINY_MODELS") or str(
        Path(os.environ.get("KANOA_DEV_CACHE", Path.home() / ".cache" / "kanoa-local-dev"))
        / "models"))
    a = ap.parse_args(argv)
    shape = {k: v for k, v in vars(a).items() if k not in ("out_root", "name")}
    key = hashlib.sha256((Path(__file__).read_text() + json.dumps(shape, sort_keys=True))
                         .encode()).hexdigest()[:12]
    final = Path(a.out_root) / f"{a.name}-{key}"

    def build(tmp: Path) -> None:
        vocab = train_tokenizer(tmp, a.vocab, a.seed)
        ids = json.loads((tmp / "tokenizer.json").read_text())["model"]["vocab"]
        write_model(tmp, a, vocab, eos_id=ids["</s>"], bos_id=ids["<s>"])
        (tmp / "kanoa-tiny.json").write_text(json.dumps(shape, indent=1, sort_keys=True))

    publish(final, key, build)
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
