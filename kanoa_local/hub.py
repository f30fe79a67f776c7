"""The Hugging Face hub: a repo's snapshot in the cache (downloaded with progress, or checked
complete offline), a file found in the cache without the network, and the token, as
huggingface_hub finds it. The only module that imports huggingface_hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .checkpoint import check_weights, indexed_shards


def cache_dir() -> Path:
    """Where Hugging Face weights go on this host: huggingface_hub's own answer ($HF_HUB_CACHE,
    the older $HUGGINGFACE_HUB_CACHE, $HF_HOME/hub, $XDG_CACHE_HOME), read as the library
    fixed it when it was imported, so it is the folder its downloads use."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def engine_caches() -> dict[str, str]:
    """The host directories an engine container mounts: the hub cache (the weights) and
    vLLM's own cache, by vLLM's rule ($VLLM_CACHE_ROOT, else $XDG_CACHE_HOME/vllm), whose
    torch.compile cache makes a second start faster."""
    root = os.environ.get("VLLM_CACHE_ROOT") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "vllm")
    return {"hf_cache": str(cache_dir()), "vllm_cache": os.path.expanduser(root)}


def cached_file(repo: str, name: str, hf_cache: Path) -> Path | None:
    """``name`` of ``repo``'s cached snapshot, or None (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    hit = try_to_load_from_cache(repo, name, cache_dir=str(hf_cache))
    return Path(hit) if isinstance(hit, str) else None

#: What vLLM reads from a repo: configs, tokenizer, chat templates, weights; its Python code
#: (``*.py``) only for a model served with --trust-remote-code.
SERVE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
CODE_PATTERNS = ["*.py"]


def missing_files(folder: Path) -> list[str]:
    """What a snapshot directory lacks to be served: config.json, or weight shards the index
    names, or any weights at all."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if (folder / "model.safetensors.index.json").is_file():
        missing += [n for n in indexed_shards(folder) if not (folder / n).is_file()]
    elif not list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin")):
        missing.append("*.safetensors")
    return missing


def download(repo: str, *, offline: bool = False, hf_cache: Path | None = None, token: str | None = None,
             on_progress: Any = None, poll: float = 1.0, code: bool = False) -> Path:
    """The repo's snapshot in the Hugging Face cache, downloaded first when needed, with
    progress as (bytes done, bytes total). Offline: the cache must already be complete, and
    what is missing is named. Errors become one-line kanoa-local errors. ``code``: its Python
    files too (a model allowed to run them)."""
    import threading

    from .errors import ConfigError, EngineError
    cache = hf_cache or cache_dir()
    patterns = SERVE_PATTERNS + (CODE_PATTERNS if code else [])
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub import errors as hf_errors
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise EngineError("huggingface_hub is missing", remedy="pip install huggingface_hub") from exc

    if offline:
        try:
            folder = Path(snapshot_download(repo, cache_dir=str(cache), local_files_only=True,
                                            allow_patterns=patterns))
        except (hf_errors.LocalEntryNotFoundError, OSError) as exc:
            raise ConfigError(f"offline, and {repo} is not in the Hugging Face cache ({cache})",
                              remedy="download it while online (`kanoa-local up` does), or serve a local "
                                     "directory with --model-path") from exc
        gaps = missing_files(folder)
        if gaps:
            raise ConfigError(f"offline, and the cached {repo} is incomplete: missing "
                              + ", ".join(gaps[:5]) + (f" and {len(gaps) - 5} more" if len(gaps) > 5 else ""),
                              remedy="finish the download while online (run `kanoa-local up` again)")
        check_weights(folder)
        return folder

    def fail(exc: Exception) -> Exception:
        return _hub_error(repo, exc, "download")

    try:
        plan = snapshot_download(repo, cache_dir=str(cache), token=token, allow_patterns=patterns,
                                 dry_run=True)
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one line
        raise fail(exc) from exc
    total = sum((f.file_size or 0) for f in plan)
    have = sum((f.file_size or 0) for f in plan if f.is_cached)
    blobs = cache / ("models--" + repo.replace("/", "--")) / "blobs"
    start_size = _dir_size(blobs)
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(poll):
            if on_progress:
                on_progress(min(total, have + max(0, _dir_size(blobs) - start_size)), total)

    watcher = threading.Thread(target=report, daemon=True)
    watcher.start()
    try:
        folder = Path(snapshot_download(repo, cache_dir=str(cache), token=token, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001
        raise fail(exc) from exc
    finally:
        stop.set()
        watcher.join(timeout=2)
    if on_progress:
        on_progress(total, total)
    check_weights(folder)
    return folder


def entry_for_repo(repo: str, *, offline: bool, hf_cache: Path | None = None) -> tuple[Any, Any] | None:
    """(catalog entry, exact weights) for a Hugging Face repo the catalog does not list: from its
    snapshot in the cache when the weights are there, else, online, from the hub's config.json (kept in
    the cache) and every safetensors file's header, read by range requests (no weights are
    downloaded). None: offline and not cached. Hub failures become one-line errors."""
    import json

    from .checkpoint import checkpoint_arch, weights_from_headers
    from .unlisted import auto_map_files, checkpoint_entry, entry_from_parts

    cache = hf_cache or cache_dir()
    hit = cached_file(repo, "config.json", cache)
    if hit is not None:
        entry, w = checkpoint_entry(hit.parent)
        if w is not None or offline:
            variant = entry.variants[0].model_copy(update={"path": None, "repo": repo, "cached": w is not None})
            return entry.model_copy(update={"name": repo, "variants": [variant],
                                            "source_file": "(Hugging Face cache)"}), w
    if offline:
        return None
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()        # its retry warnings are not this command's output
    token = hf_token()
    try:
        # the headers first: one request that fails at once when the hub does not answer
        meta = HfApi().get_safetensors_metadata(repo, token=token)
        cfg_path = hf_hub_download(repo, "config.json", cache_dir=str(cache), token=token)
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one line
        raise _hub_error(repo, exc, "read") from exc
    cfg = json.loads(Path(cfg_path).read_text())
    headers = [{n: {"dtype": t.dtype, "shape": list(t.shape)} for n, t in f.tensors.items()}
               for f in meta.files_metadata.values()]
    w = weights_from_headers(headers, 2)
    entry = entry_from_parts(repo, cfg, checkpoint_arch(cfg, w), w, {"repo": repo}, auto_map_files(cfg),
                             source_file="(Hugging Face hub)")
    return entry, w


def _hub_error(repo: str, exc: Exception, verb: str) -> Exception:
    """A hub failure as one kanoa-local line: gated, missing, not safetensors, or the network."""
    from huggingface_hub import errors as hf_errors

    from .errors import ConfigError, EngineError

    if isinstance(exc, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)):
        pass                    # the network, below (a subclass of EntryNotFoundError)
    elif isinstance(exc, hf_errors.GatedRepoError):
        return EngineError(f"{repo} is gated and this token has no access",
                           remedy=f"accept the license on https://huggingface.co/{repo} and set HF_TOKEN")
    elif isinstance(exc, hf_errors.RepositoryNotFoundError):
        return EngineError(f"{repo} does not exist on the Hugging Face hub (or is private)",
                           remedy="check the repo id in models.toml, or set HF_TOKEN for a private repo")
    elif isinstance(exc, (hf_errors.NotASafetensorsRepoError, hf_errors.EntryNotFoundError)):
        return ConfigError(f"{repo} has no config.json and safetensors weights kanoa-local can read",
                           remedy="add the model to models.toml with an [arch] table")
    return EngineError(f"cannot {verb} {repo}: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}",
                       remedy="check the network (or the HF_ENDPOINT mirror); with the weights already "
                              "cached, pass --offline")


def _dir_size(d: Path) -> int:
    try:
        return sum(f.stat().st_size for f in d.iterdir() if f.is_file())
    except OSError:
        return 0


def hf_token() -> str | None:
    """The Hugging Face token as huggingface_hub finds it ($HF_TOKEN, the legacy variable, or
    the file `hf auth login` writes): one reader for plan, up, pull and export."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - an old huggingface_hub: the environment only
        return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None
