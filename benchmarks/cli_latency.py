"""Wall time of `kanoa-local check --json` and of importing the CLI, each beside
`python -c pass` measured in the same run (median of N, default 9).

Goals: check <= 0.35 s, CLI import <= 150 ms (import time = import run - baseline run).

    python benchmarks/cli_latency.py [-n 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def median_wall(cmd: list[str], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=9)
    n = ap.parse_args().n
    py = sys.executable
    base = median_wall([py, "-c", "pass"], n)
    imp = median_wall([py, "-c", "import kanoa_local.cli"], n)
    chk = median_wall([py, "-m", "kanoa_local", "check", "--json"], n)
    print(f"{'what':<32}{'median s':>10}{'x baseline':>12}")
    print(f"{'python -c pass (baseline)':<32}{base:>10.3f}{1.0:>12.2f}")
    print(f"{'import kanoa_local.cli':<32}{imp:>10.3f}{imp / base:>12.2f}   "
          f"import cost {1000 * (imp - base):.0f} ms (goal <= 150 ms)")
    print(f"{'kanoa-local check --json':<32}{chk:>10.3f}{chk / base:>12.2f}   "
          f"(goal <= 0.35 s)")


if __name__ == "__main__":
    main()
