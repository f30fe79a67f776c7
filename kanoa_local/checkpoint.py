"""Real numbers from checkpoint files, where they are on this machine.

A variant's ``config.json`` and safetensors headers may be in a local directory (``path``) or in
the Hugging Face cache (``repo``, found with huggingface_hub's cache lookup; nothing is
downloaded). From them come the architecture (layers, KV heads, head dim, sliding-window
layers, context) and exact weight bytes, split into quantised, unquantised, embedding and
vision tensors. The catalog's table is the fallback; whatever is read here wins.

A safetensors file starts with an 8-byte little-endian header length and a JSON header listing
every tensor's dtype, shape and byte range, so reading headers costs a few KiB per shard.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from .catalog import Arch, Catalog, ModelEntry, Variant
from .plan.memory import Weights

FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
OTHER_BYTES = {"I64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 0.5}
VISION_PREFIXES = ("vision_tower", "vision_model", "visual", "vision_embed", "multi_modal_projector",
                   "mlp1", "image_newline", "vit", "image_encoder", "model.vision", "model.visual",
                   "model.multi_modal_projector", "model.vision_tower", "model.vision_model",
                   "model.image_", "vision_backbone", "model.vision_backbone")
EMBED_MARKERS = ("embed_tokens", "lm_head", "wte", "word_embeddings", "tok_embeddings", "embed_out",
                 "ff_out", "wte.embedding")
MAX_HEADER = 100 * 1024 * 1024


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of one .safetensors file (tensor name → dtype/shape/offsets)."""
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path.name}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER:
            raise ValueError(f"{path.name}: header length {n} is not plausible")
        header = json.loads(fh.read(n))
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}: the header is not a JSON object")
    header.pop("__metadata__", None)
    return header


LFS_POINTER = b"version https://git-lfs"


def damaged_shards(folder: Path) -> list[str]:
    """What is wrong with each weights file of a checkpoint directory, as "file: why" — read
    from the headers and file sizes only (what vLLM would fail on after loading for a while):
    a Git LFS pointer instead of the weights, a truncated file, a header that is not one."""
    names = indexed_shards(folder)
    shards = [folder / n for n in names] if names else sorted(folder.glob("*.safetensors"))
    out = []
    for shard in shards:
        if not shard.is_file():
            continue                    # missing files are said by missing_files()
        try:
            size = shard.stat().st_size
            with shard.open("rb") as fh:
                head = fh.read(8 + len(LFS_POINTER))
            if head.startswith(LFS_POINTER):
                out.append(f"{shard.name}: a Git LFS pointer, not the weights (fetch them: `git lfs pull`)")
                continue
            header = read_header(shard)
            (n,) = struct.unpack("<Q", head[:8])
            end = max((int(t["data_offsets"][1]) for t in header.values()
                       if isinstance(t, dict) and "data_offsets" in t), default=0)
            if 8 + n + end > size:
                out.append(f"{shard.name}: truncated ({size:,} bytes of {8 + n + end:,})")
        except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError, RecursionError) as exc:
            out.append(f"{shard.name}: not a readable safetensors file ({str(exc)[:120]})")
        except OSError as exc:
            out.append(f"{shard.name}: cannot be read ({exc.strerror or exc})")
    return out


def check_weights(folder: Path) -> None:
    """A ConfigError naming the damaged weights files of ``folder``, before any engine starts."""
    from .errors import ConfigError

    bad = damaged_shards(folder)
    if bad:
        raise ConfigError(f"{folder}: damaged weights: " + "; ".join(bad[:3])
                          + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""),
                          remedy="copy or download the checkpoint again (a hub download: delete it from the "
                                 "Hugging Face cache and run `kanoa-local pull`)")


def weights_from_headers(headers: list[dict[str, Any]], compute_bytes: int) -> Weights:
    """Bytes each tensor will take once loaded: float tensors become the compute dtype (an fp32
    checkpoint loads as bf16), packed/quantised ones (int, fp8) stay as stored."""
    quantised = unquantised = embeddings = vision = 0
    for header in headers:
        for name, t in header.items():
            numel = 1
            for d in t.get("shape", []):
                numel *= d
            dtype = t.get("dtype", "")
            if dtype in FLOAT_BYTES:
                size = numel * compute_bytes
                kind = "float"
            else:
                size = int(numel * OTHER_BYTES.get(dtype, 1))
                kind = "packed"
            if name.startswith(VISION_PREFIXES):
                vision += size
            elif any(m in name for m in EMBED_MARKERS):
                embeddings += size
            elif kind == "packed" or name.endswith(("scales", "zeros", "g_idx", "weight_scale",
                                                     "input_scale", "weight_zero_point")):
                quantised += size
            else:
                unquantised += size
    return Weights(quantised=quantised, unquantised=unquantised, embeddings=embeddings,
                   vision=vision, source="checkpoint")


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    for key in ("text_config", "llm_config", "language_config", "text_model"):
        sub = cfg.get(key)
        if isinstance(sub, dict) and sub.get("num_hidden_layers"):
            return sub
    return cfg


def arch_from_config(cfg: dict[str, Any], vision_params_b: float = 0.0) -> Arch:
    """Arch numbers from a Hugging Face config.json (nested text configs of VLMs included)."""
    t = _text_config(cfg)

    def pick(*keys: str, default: Any = None) -> Any:
        for k in keys:
            if t.get(k) is not None:
                return t[k]
            if cfg.get(k) is not None:
                return cfg[k]
        return default

    layers = int(pick("num_hidden_layers", "n_layers", "num_layers"))
    heads = int(pick("num_attention_heads", "n_heads"))
    kv_heads = int(pick("num_key_value_heads", "n_kv_heads", default=heads))
    hidden = int(pick("hidden_size", "d_model", "dim"))
    head_dim = int(pick("head_dim", default=0) or hidden // heads)
    vocab = int(pick("vocab_size", "embedding_size"))
    max_ctx = int(pick("max_position_embeddings", "max_sequence_length", "seq_length", default=4096))
    window = pick("sliding_window")
    sliding = 0
    layer_types = pick("layer_types")
    if isinstance(layer_types, list) and layer_types:
        sliding = sum(1 for x in layer_types if "sliding" in str(x))
    elif window and pick("use_sliding_window", default=True) is not False:
        pattern = pick("sliding_window_pattern", "_sliding_window_pattern")
        if isinstance(pattern, int) and pattern > 1:
            sliding = layers - layers // pattern
        elif window < max_ctx:
            sliding = layers          # every layer windowed (Mistral v0.1 style)
    if not sliding or not window or window >= max_ctx:
        sliding, window = 0, None
    positions = rope_positions(pick("rope_parameters", "rope_scaling"), max_ctx, pick("rope_local_base_freq"))
    experts = pick("num_local_experts", "num_experts", "n_routed_experts")
    lora = pick("kv_lora_rank")           # MLA: the latent a token keeps, not K and V per head
    return Arch(
        layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, hidden=hidden,
        intermediate=pick("moe_intermediate_size", "intermediate_size", "ffn_dim"),
        vocab=vocab, max_context=max_ctx, sliding_window=window, sliding_layers=sliding,
        tie_embeddings=bool(pick("tie_word_embeddings", default=cfg.get("tie_word_embeddings", False))),
        experts=experts, experts_per_token=pick("num_experts_per_tok", "moe_topk"),
        mla_kv_dim=int(lora) + int(pick("qk_rope_head_dim", default=0)) if lora else None,
        rope_positions=positions if positions != max_ctx else None,
        vision_params_b=vision_params_b, source="config.json")


def rope_positions(scaling: Any, max_ctx: int, local_base: Any = None) -> int:
    """Positions in all of vLLM's rotary caches for a config's ``rope_scaling``/``rope_parameters``.

    Linear and dynamic-NTK scaling build ``max_ctx × factor`` positions (dynamic: up to vLLM 0.21;
    counted so on every release, the larger), YaRN ``original × factor``, LongRoPE ``original +
    max_ctx`` (a short and a long cache), multimodal RoPE (``mrope_section``) 4 × that, the others
    ``max_ctx``; one cache per distinct setting (a per-layer-type dict, or Gemma 3's
    ``rope_local_base_freq`` for its sliding layers, adds one). Read in vLLM 0.11-0.34.
    """
    if isinstance(scaling, dict) and scaling and all(isinstance(v, dict) for v in scaling.values()):
        return sum(rope_positions(v, max_ctx) for v in scaling.values())
    total = max_ctx if local_base else 0
    s = scaling if isinstance(scaling, dict) else {}
    kind, factor = str(s.get("rope_type") or s.get("type") or "default"), s.get("factor")
    factor = float(factor) if isinstance(factor, (int, float)) and factor > 0 else 1.0
    original = s.get("original_max_position_embeddings")
    original = original if isinstance(original, int) and 0 < original <= max_ctx else max_ctx
    mrope = 4 if s.get("mrope_section") or kind == "mrope" else 1
    if kind in ("linear", "dynamic"):
        return total + int(max_ctx * factor)
    if kind == "yarn":
        return total + int(original * factor) * mrope
    if kind in ("longrope", "su"):
        return total + original + max_ctx
    return total + max_ctx * mrope


def find_files(variant: Variant, hf_cache: Path | None = None) -> Path | None:
    """The directory with the variant's config.json, locally or in the HF cache; None if absent."""
    if variant.path:
        p = Path(variant.path).expanduser()
        return p if (p / "config.json").is_file() else None
    if not variant.repo:
        return None
    if hf_cache is None:
        from .hub import cache_dir

        hf_cache = cache_dir()
    # The hub cache keeps a repo under models--<org>--<name>: look before importing the hub client.
    if not (hf_cache / ("models--" + variant.repo.replace("/", "--"))).is_dir():
        return None
    from .hub import cached_file

    hit = cached_file(variant.repo, "config.json", hf_cache)
    return hit.parent if hit else None


def indexed_shards(folder: Path) -> list[str]:
    """The weight files model.safetensors.index.json names (empty without a readable index)."""
    try:
        index = json.loads((folder / "model.safetensors.index.json").read_text())
    except (OSError, ValueError):
        return []
    return sorted(set(index.get("weight_map", {}).values()))


def read_checkpoint(folder: Path, compute_bytes: int = 2) -> tuple[Arch | None, Weights | None]:
    """(arch, weights) from a checkpoint directory; either is None when its files are missing.
    Weights need every shard named by the index to be present."""
    weights = None
    cfg: dict[str, Any] | None = None
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text())
        except ValueError:
            cfg = None
    names = indexed_shards(folder)
    shards = [folder / n for n in names] if names else sorted(folder.glob("*.safetensors"))
    if shards and all(s.is_file() for s in shards):
        try:
            weights = weights_from_headers([read_header(s) for s in shards], compute_bytes)
        except (OSError, ValueError):
            weights = None
    return (checkpoint_arch(cfg, weights, compute_bytes) if cfg is not None else None), weights


def checkpoint_arch(cfg: dict[str, Any], weights: Weights | None, compute_bytes: int = 2) -> Arch | None:
    """The arch of a checkpoint's config.json (None where it is not a decoder config this reads),
    its vision tower sized from the tensors where they are known."""
    try:
        arch = arch_from_config(cfg)
    except (ValueError, TypeError, KeyError):
        return None
    if weights is not None and weights.vision:
        arch = arch.model_copy(update={"vision_params_b": round(weights.vision / compute_bytes / 1e9, 3)})
    return arch


def enrich(catalog: Catalog, hf_cache: Path | None = None) -> tuple[Catalog, dict[tuple[str, str], Weights]]:
    """The catalog with numbers read from checkpoints found on this machine, and the exact
    weights per (model id, variant source). Variants found in the cache are marked ``cached``."""
    weights: dict[tuple[str, str], Weights] = {}
    models: dict[str, ModelEntry] = {}
    for key, entry in catalog.models.items():
        arch = entry.arch
        variants = []
        for v in entry.variants:
            folder = find_files(v, hf_cache)
            if folder is None:
                variants.append(v)
                continue
            a, w = read_checkpoint(folder)
            if w is not None:
                weights[(key, v.source)] = w
            # The unquantised checkpoint's config is the model's architecture.
            if a is not None and (arch is None or arch.source != "config.json" or not v.is_quantised):
                if arch is not None:     # what config.json does not say, the catalog keeps
                    a = a.model_copy(update={"vision_params_b": a.vision_params_b or arch.vision_params_b,
                                             "encoder_kv_tokens": a.encoder_kv_tokens or arch.encoder_kv_tokens})
                arch = a
            variants.append(v.model_copy(update={"cached": bool(v.repo)}))
        models[key] = entry.model_copy(update={"arch": arch, "variants": variants})
    return catalog.model_copy(update={"models": models}), weights


def load_enriched(extra: list[str] | None = None, *, user: bool = True) -> tuple[Catalog, dict[tuple[str, str], Weights]]:
    """The catalog (bundled + user + ``extra`` files) with what local checkpoints say."""
    from .catalog import load_catalog

    return enrich(load_catalog(list(extra or []), user=user))
