"""Models the catalog does not list, made into catalog entries: a local checkpoint directory, or a
Hugging Face repo id read from its cached snapshot or (online, through hub.py) the hub's
config.json and safetensors headers. The entry carries the checkpoint's exact weights."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .catalog import Arch, Catalog, ModelEntry, Variant
from .checkpoint import check_weights, read_checkpoint
from .plan.memory import Weights


def entry_from_directory(folder: Path) -> ModelEntry:
    """A catalog entry for a local checkpoint directory given on the command line."""
    return checkpoint_entry(folder)[0]


def checkpoint_entry(folder: Path) -> tuple[ModelEntry, Weights | None]:
    """A catalog entry for a local checkpoint directory, and its exact weights when every shard
    is there."""
    from .errors import ConfigError

    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{folder}: no config.json", remedy="point at a Hugging Face checkpoint directory")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{cfg_path}: not valid JSON ({exc})", remedy=f"fix {cfg_path}") from exc
    check_weights(folder)
    arch, w = read_checkpoint(folder)
    entry = entry_from_parts(folder.name, cfg, arch, w, {"path": str(folder)}, remote_code_files(folder, cfg))
    return entry, w


def entry_from_parts(name: str, cfg: dict[str, Any], arch: Arch | None, w: Weights | None,
                     source: dict[str, Any], code_files: list[str], *, source_file: str = "(directory)",
                     **variant: Any) -> ModelEntry:
    """A catalog entry from a checkpoint's config.json and tensor list, wherever they were read."""
    from .errors import ConfigError

    if arch is None:
        raise ConfigError(f"{source_file}: not a decoder config kanoa-local can read",
                          remedy="add the model to models.toml with an [arch] table")
    qc = cfg.get("quantization_config") or {}
    quant = str(qc.get("quant_method")) if qc else None
    precision = checkpoint_precision(qc)
    params = (w.total / 2 if w and not quant else 0) or arch.layers * 12 * arch.hidden ** 2
    vision = bool(cfg.get("vision_config")) or arch.vision_params_b > 0
    params_b = max(round(params / 1e9, 3), 0.001)
    return ModelEntry(id=name.lower(), name=name, family=str(cfg.get("model_type", "local")),
                      params_b=params_b, vision=vision, status="theoretical", cpu=params_b <= 4.0,
                      arch=arch, variants=[Variant(precision=precision, **source, **variant)],
                      trust_remote_code=bool(cfg.get("auto_map")), remote_code_files=code_files,
                      source_file=source_file)


def checkpoint_precision(qc: dict[str, Any]) -> Any:
    """The precision a checkpoint's quantization_config names (bf16 without one)."""
    from .errors import ConfigError

    method = str(qc.get("quant_method") or "") if qc else ""
    if not method:
        return "bf16"
    if method == "compressed-tensors":
        groups = [g.get("weights") or {} for g in (qc.get("config_groups") or {}).values() if isinstance(g, dict)]
        bits = {int(g.get("num_bits") or 0) for g in groups}
        kinds = {str(g.get("type") or "") for g in groups}
        return "fp8" if 8 in bits and "float" in kinds else "int8" if 8 in bits else "w4a16"
    if method == "bitsandbytes" and not qc.get("load_in_8bit"):
        return "bnb-4bit"
    known = {"awq": "awq", "gptq": "gptq", "fp8": "fp8", "modelopt": "nvfp4", "gguf": "gguf"}
    if method not in known:
        raise ConfigError(f"the checkpoint is quantised with {method}, which kanoa-local does not plan yet",
                          remedy="choose a bf16, FP8, AWQ, GPTQ, W4A16 or bitsandbytes 4-bit checkpoint")
    return known[method]


#: a Hugging Face repo id: owner/name
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def with_model(catalog: Catalog, weights: dict[tuple[str, str], Weights], model: str | None, *,
               offline: bool, hf_cache: Path | None = None) -> tuple[Catalog, dict[tuple[str, str], Weights], str | None]:
    """The catalog and exact weights with MODEL in them when the catalog does not list it: a local
    checkpoint directory, or a Hugging Face repo id read from its cached snapshot or, online, from
    the hub's config.json and safetensors headers (a few KiB; no weights are downloaded)."""
    from .errors import UsageError

    if not model:
        return catalog, weights, model
    folder = Path(model).expanduser()
    if folder.is_dir():
        entry, w = checkpoint_entry(folder)
    else:
        try:
            catalog.get(model)
            return catalog, weights, model
        except UsageError as unknown:
            if not REPO_ID.fullmatch(model):
                raise
            from .hub import entry_for_repo

            found = entry_for_repo(model, offline=offline, hf_cache=hf_cache)
            if found is None:
                raise UsageError(unknown.message, remedy=(unknown.remedy or "add it to models.toml")
                                 + "; offline, a repo the matrix does not list is read from the Hugging Face "
                                   f"cache: fetch it while online (`kanoa-local pull {model}`)") from None
            entry, w = found
            # an id a deployment can be named after: the repo's name, or owner-name where taken
            short = model.rsplit("/", 1)[-1].lower()[:63]
            entry = entry.model_copy(update={"id": short if short not in catalog.models
                                             else model.lower().replace("/", "-")[:63]})
    catalog = catalog.model_copy(update={"models": {**catalog.models, entry.id: entry}})
    if w is not None:
        weights = {**weights, (entry.id, entry.variants[0].source): w}
    return catalog, weights, entry.id


def remote_code_files(folder: Path, cfg: dict) -> list[str]:
    """The Python files a checkpoint directory's remote code is in: those ``auto_map`` names, else
    the directory's own .py files."""
    return auto_map_files(cfg) or sorted(p.name for p in folder.glob("*.py"))


def auto_map_files(cfg: dict) -> list[str]:
    """The Python files ``auto_map`` makes vLLM (transformers) import from a checkpoint: for
    "modeling_x.Class" that is modeling_x.py; a "repo--module.Class" names another repo's; a
    tokenizer's entry is a [slow, fast] list."""
    files: set[str] = set()
    refs = (cfg.get("auto_map") or {}).values() if isinstance(cfg.get("auto_map"), dict) else []
    for ref in refs:
        for one in ref if isinstance(ref, list) else [ref]:
            if isinstance(one, str) and "." in one:
                repo, _, module = one.rpartition("--")
                files.add((f"{repo}:" if repo else "") + module.rsplit(".", 1)[0] + ".py")
    return sorted(files)
