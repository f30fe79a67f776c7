"""The kanoa hand-off: an ``AnalyticsInterpreter`` wired to a deployment. The only module
that imports ``kanoa`` (an optional extra: ``pip install 'kanoa-local[kanoa]'``).

What it adds, through kanoa's own extension points only:
- **cost**: kanoa prices a request from its pricing table (the bundled one merged with the
  user file ``~/.config/kanoa/pricing.json``) under ``openai`` / <served model name>, and says
  $0.0 for local models it does not know. The deployment's rate (default $0.10 per million
  tokens, input + output, as kanoa's docs estimate) is written into that user file for the
  served name, leaving every other entry as it was.
- **vision guard**: ``LocalInterpreter`` is a subclass whose ``interpret`` refuses a figure for
  a text-only model before anything is sent, naming the vision models that fit this machine.
"""

from __future__ import annotations

import contextlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, VisionNotSupported
from .state import Deployment

INSTALL_HINT = "pip install 'kanoa-local[kanoa]'"
PRICE_NOTE = "kanoa-local: estimated cost of a local model"


def _kanoa() -> Any:
    try:
        import kanoa
        import kanoa.pricing
    except ImportError as exc:
        raise ConfigError("kanoa is not installed, so there is no interpreter to hand over",
                          remedy=INSTALL_HINT) from exc
    return kanoa


#: where kanoa 0.6 reads its user prices, when kanoa is not importable here (a notebook's
#: environment may have it while this one does not)
DEFAULT_PRICING_FILE = Path("~/.config/kanoa/pricing.json")


def pricing_file() -> Path:
    """kanoa's user pricing file (where kanoa itself reads it from)."""
    try:
        return Path(_kanoa().pricing.USER_CONFIG_PATH)
    except ConfigError:
        return DEFAULT_PRICING_FILE.expanduser()


def _read_prices(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text() or "{}")
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(f"kanoa's pricing file {path} cannot be read: {exc}",
                          remedy="fix or remove it; kanoa-local adds its entry there") from exc
    return data


def remove_price(served_name: str) -> bool:
    """Take kanoa-local's own price for ``served_name`` out of kanoa's user pricing file (an
    entry kanoa-local did not write is left alone); whether one was removed."""

    path = pricing_file()
    with _pricing_lock(path):
        return _remove_price(path, served_name)


def _remove_price(path: Path, served_name: str) -> bool:
    from .state import write_atomic

    data = _read_prices(path)
    prices = data.get("openai")
    if not isinstance(prices, dict) or not isinstance(prices.get(served_name), dict) \
            or prices[served_name].get("note") != PRICE_NOTE:
        return False
    data["openai"] = {k: v for k, v in prices.items() if k != served_name}
    write_atomic(path, json.dumps(data, indent=2) + "\n")
    return True


def ensure_price(served_name: str, usd_per_mtok: float) -> Path:
    """Make kanoa price ``served_name`` at ``usd_per_mtok`` for input and output tokens alike.
    Other entries of the user's pricing file are kept; a broken file is not overwritten."""

    path = pricing_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _pricing_lock(path):
        _ensure_price(path, served_name, usd_per_mtok)
    return path


def _ensure_price(path: Path, served_name: str, usd_per_mtok: float) -> None:
    from .state import write_atomic

    data = _read_prices(path)
    entry = {"input_price": float(usd_per_mtok), "output_price": float(usd_per_mtok), "note": PRICE_NOTE}
    current = data.get("openai", {}).get(served_name) if isinstance(data.get("openai"), dict) else None
    if current == entry or (isinstance(current, dict) and current.get("note") != PRICE_NOTE):
        return                            # already so, or a price the user set: theirs
    openai_prices = data.get("openai")
    if not isinstance(openai_prices, dict):
        openai_prices = {}
    data["openai"] = {**openai_prices, served_name: entry}
    write_atomic(path, json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def _pricing_lock(path: Path) -> Iterator[None]:
    """Read-modify-write of kanoa's pricing file by one kanoa-local at a time: the lock is the
    folder's own flock (no lock file is left in kanoa's folder); kanoa itself only reads."""
    from .statefiles import flocked

    with contextlib.ExitStack() as held:
        try:
            held.enter_context(flocked(path.parent, folder=True))
        except OSError:
            pass                   # no folder (nothing to protect yet) or unreadable: as before
        yield


def default_max_tokens(dep: Deployment) -> int:
    """An answer length that fits the served context and the engine's speed: 256 tokens on
    the CPU engine (a few tokens a second), else up to kanoa's own 3000, at most half the
    context."""
    ceiling = 256 if dep.device == "cpu" else 3000
    return max(16, min(ceiling, (dep.max_model_len or 4096) // 2))


def vision_alternatives(limit: int = 4) -> tuple[list[str], str | None]:
    """Vision models of the matrix that fit this machine (best first) and, when none does,
    a sentence on the closest one."""
    from .catalog import load_catalog
    from .plan import PlanRequest, plan
    from .probe import probe

    result = plan(probe(docker=False), load_catalog(), PlanRequest(vision=True))
    names: list[str] = []
    for c in result.candidates:
        if c.fits != "no" and c.model_id not in names:
            names.append(c.model_id)
    return names[:limit], (None if names else result.summary)


@lru_cache(maxsize=1)
def interpreter_class() -> type:
    base = _kanoa().AnalyticsInterpreter

    class LocalInterpreter(base):  # type: ignore[misc, valid-type]
        """kanoa's AnalyticsInterpreter for a kanoa-local deployment (see ``.deployment``)."""

        deployment: Deployment

        def interpret(self, fig: Any = None, *args: Any, **kwargs: Any) -> Any:
            if fig is not None and not self.deployment.vision:
                fits, closest = vision_alternatives()
                what = ("vision models that fit here: " + ", ".join(fits)) if fits else (
                    "no vision model of the matrix fits this machine" + (f" ({closest})" if closest else ""))
                raise VisionNotSupported(
                    f"{self.deployment.model_id} is text-only and cannot read a figure; {what}",
                    remedy="pass data or context instead, or start a vision model beside it "
                           "(`kanoa-local up MODEL --name vision --port 8001`) and use its interpreter")
            return super().interpret(fig, *args, **kwargs)

        def with_kb(self, kb_path: Any = None, kb_content: str | None = None,
                    kb_type: str = "text") -> Any:
            """kanoa's ``with_kb``, plus what the vLLM backend needs said: it reads text
            knowledge bases only (``kb_type="text"``), a single file works as well as a folder,
            and a path with no text in it is an error instead of a silently empty KB."""
            return super().with_kb(kb_content=kb_text(kb_path, kb_content, kb_type))

    return LocalInterpreter


TEXT_SUFFIXES = {".md", ".txt", ".rst", ".py", ".js", ".ts", ".java", ".c", ".cpp", ".h", ".go", ".rs"}


def kb_text(kb_path: Any, kb_content: str | None, kb_type: str = "text") -> str | None:
    """The knowledge base's text, as kanoa's text KB puts it together (``# name`` then the
    file), read here so that mistakes are caught before a request."""
    from .errors import UsageError

    if kb_type not in ("text", "auto"):
        raise UsageError(f"kb_type={kb_type!r}: a vLLM-served model reads text knowledge bases only",
                         remedy='use kb_type="text" with .md/.txt/.rst (or code) files')
    if kb_content is not None or kb_path is None:
        return kb_content
    p = Path(kb_path).expanduser()
    if not p.exists():
        raise ConfigError(f"knowledge base {p} does not exist", remedy="give a text file or a folder of them")
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()
                                           and f.suffix.lower() in TEXT_SUFFIXES)
    parts = []
    for f in files:
        try:
            parts.append(f"# {f.name}\n\n{f.read_text(encoding='utf-8')}")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {f} as UTF-8 text: {exc}", remedy="convert it to text") from exc
    if not parts or not any(x.strip() for x in parts):
        raise ConfigError(f"no text in the knowledge base {p}",
                          remedy="add .md/.txt/.rst files (PDFs and images are not read for vLLM models)")
    return "\n\n".join(parts)


def interpreter(dep: Deployment, **overrides: Any) -> Any:
    """``AnalyticsInterpreter(backend="vllm", ...)`` for ``dep``; ``overrides`` go to kanoa
    (temperature, max_tokens, kb_path, system_prompt, ...)."""
    from .state import read_api_key

    cls = interpreter_class()
    ensure_price(dep.served_model_name, dep.cost_per_mtok)
    kwargs: dict[str, Any] = {
        "backend": "vllm", "api_base": dep.base_url, "model": dep.served_model_name,
        "api_key": read_api_key(dep), "max_tokens": dep.max_tokens or default_max_tokens(dep)}
    if dep.temperature is not None:
        kwargs["temperature"] = dep.temperature
    kwargs.update(overrides)
    interp = cls(**kwargs)
    if dep.spec.tls is not None and hasattr(getattr(interp, "backend", None), "client"):
        # kanoa builds a plain OpenAI client; HTTPS to this server needs one that trusts its certificate
        from .client import openai_client

        interp.backend.client = openai_client(dep)
    interp.deployment = dep
    return interp
