"""Human views of result models (rich). No decisions and no I/O besides the console."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .check import CheckReport
    from .hardware import HardwareProfile

_MARK = {"pass": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]",
         "info": "[blue]i[/]", "skip": "[dim]-[/]"}
_VERDICT_STYLE = {"gpu-ready": "bold green", "cpu-only": "bold yellow",
                  "gpu-not-ready": "bold red", "cannot-serve": "bold red"}


def console(stderr: bool = False) -> Any:
    import shutil
    import sys

    from rich.console import Console

    # Piped output (a file, a pager, CI logs) gets a wide page instead of rich's 80 columns.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else max(shutil.get_terminal_size((140, 24)).columns, 140)
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / 1024**3:.1f} GiB"


def _e(text: Any) -> str:
    """Data shown as it is: a model name, path, reason or label with [brackets] in it is not
    rich markup (it would vanish, or stop the view with a MarkupError)."""
    from rich.markup import escape

    return escape(str(text))


def profile_table(p: "HardwareProfile", verbose: bool = False) -> Any:
    from rich.table import Table

    t = Table(title=f"Machine ({p.source})", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    if p.description:
        t.add_row("profile", _e(p.description))
    if p.gpus:
        for g in p.gpus:
            link = "?"
            if g.pcie.max_gen:
                link = f"PCIe {g.pcie.max_gen}.0 x{g.pcie.max_width} max"
                if g.pcie.current_gen:
                    link += f" (now {g.pcie.current_gen}.0 x{g.pcie.current_width})"
            t.add_row(f"GPU {g.index}", f"{_e(g.name)}  {gib(g.memory_total)} "
                      f"({gib(g.memory_free)} free)  cc {g.cc_text}  {link}")
            if verbose:
                t.add_row("", f"uuid {_e(g.uuid)}" + ("  MIG slice" if g.is_mig_slice else ""))
                for n in g.notes:
                    t.add_row("", f"[dim]{_e(n.field)}: {_e(n.message)}[/]")
    else:
        t.add_row("GPU", f"none ({_e(p.nvml_error or 'no NVIDIA GPU found')})")
    if p.driver_version:
        t.add_row("driver", _e(f"{p.driver_version} (CUDA {p.cuda_driver_text or '?'})"))
    t.add_row("CPU", _e(f"{p.cpu.count} × {p.cpu.model or '?'}"
                        + (f"  [{' '.join(p.cpu.flags)}]" if verbose and p.cpu.flags else "")))
    t.add_row("RAM", f"{gib(p.ram_total)} ({gib(p.ram_available)} available)")
    t.add_row("disk", f"{gib(p.disk_free)} free at {_e(p.disk_path)}")
    if p.docker is not None:
        d = p.docker
        t.add_row("Docker", _e(f"server {d.server_version}, runtimes: {', '.join(d.runtimes) or '-'}"
                               if d.reachable else f"not reachable ({d.reason})"))
    if verbose:
        for n in p.notes:
            t.add_row("note", f"[dim]{_e(n.field)}: {_e(n.message)}[/]")
    return t


def check_report(report: "CheckReport", verbose: bool = False) -> None:
    from rich.table import Table

    out = console()
    out.print(profile_table(report.profile, verbose))
    out.print()
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(width=1)
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    for item in report.items:
        t.add_row(_MARK[item.status], _e(item.title), _e(item.detail))
        if item.remedy and item.status in ("fail", "warn"):
            t.add_row("", "", f"[dim]→ {_e(item.remedy)}[/]")
    out.print(t)
    out.print()
    if report.models:
        shown = report.models if verbose else [m for m in report.models if m.fits != "no"]
        rest = len(report.models) - len(shown)
        out.print("[bold]Models that fit[/]" if not verbose else "[bold]Models[/]")
        if shown:
            out.print(model_verdicts_table(shown, verbose))
        else:
            out.print("  none")
        if rest:
            out.print(f"[dim]{rest} more do not fit here: `kanoa-local models` (or -v) says why[/]")
        out.print()
    out.print(f"[{_VERDICT_STYLE[report.verdict]}]{_e(report.summary)}[/]  "
              f"[dim](exit {report.exit_code})[/]")


_FIT = {"good": "[green]✓ fits[/]", "tight": "[yellow]~ tight[/]", "no": "[red]✗ no[/]"}


def model_verdicts_table(rows: list[Any], verbose: bool = False) -> Any:
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    cols = ["model", "params", "vision", "status", "variants"] + (["seed page says"] if verbose else []) \
        + ["fits here", "best here / why not"]
    for col in cols:
        t.add_column(col, no_wrap=col != "best here / why not",
                     ratio=1 if col == "best here / why not" else None)
    for m in rows:
        params = f"{m.params_b:g}B" + (f"/{m.active_params_b:g}B" if m.active_params_b else "")
        detail = _e(m.best or (m.reason if verbose else m.reason.split(";")[0]))
        if m.best and verbose:
            detail += f"  [dim]{_e(m.reason)}[/]"
        if not m.best and m.needs:
            detail += f"  [dim](needs {_e(m.needs)})[/]"
        flags = ("  [dim]gated[/]" if m.gated else "") + ("  [dim]remote code[/]" if m.trust_remote_code else "")
        status = _e(m.status) + (f" [green](verified on {_e(', '.join(m.verified_on))})[/]" if m.verified_on else "")
        row = [f"{_e(m.id)}{flags}", params, "✓" if m.vision else "-", status, _e(" ".join(m.precisions))]
        if verbose:
            row.append(_e(f"{m.seed_vram_gb:g} GB {m.seed_precision or ''}".strip()) if m.seed_vram_gb else "-")
        t.add_row(*row, _FIT[m.fits], detail)
    return t


def models_report(report: Any, verbose: bool = False) -> None:
    out = console()
    out.print(f"[bold]Models[/] on {_e(report.machine)}")
    out.print(model_verdicts_table(report.models, verbose))
    n = sum(1 for m in report.models if m.fits != "no")
    out.print(f"\n{n} of {len(report.models)} fit.  `kanoa-local plan MODEL` explains one; "
              "`--gpu NAME` / `--vram GB` / `--gpus N` ask what-if; -v adds the seed page's VRAM "
              "figures.  Params: total/active for mixtures of experts.")


def _bar(terms: list[Any], budget: int, width: int = 40) -> str:
    colors = ["blue", "magenta", "cyan", "yellow", "green", "red"]
    out, used = "", 0
    for i, t in enumerate(terms):
        n = max(1, round(t.bytes / budget * width)) if t.bytes > 0 else 0
        n = min(n, width - used)
        out += f"[{colors[i % len(colors)]}]" + "█" * n + "[/]"
        used += n
    return out + "[dim]" + "░" * max(0, width - used) + "[/]"


def plan_report(report: Any, verbose: int = 0) -> None:
    from rich.table import Table

    from .plan.fit import why_lost

    out = console()
    r = report.plan
    out.print(f"[bold]Plan[/] for {_e(r.machine)}")
    c = r.chosen
    if c is None:
        out.print(f"[bold red]{_e(r.summary)}[/]")
        if r.remedy:
            out.print(f"[dim]→ {_e(r.remedy)}[/]")
        _rejected(out, r.candidates[: 12 if verbose else 6])
        return
    s = c.settings
    out.print(f"[bold green]{_e(r.summary)}[/]")
    v = c.variant
    rows = [("model", f"{_e(c.model_name)}  [dim]{_e(v.source)}[/]"),
            ("precision", _e((v.label if c.device == "gpu" else "float32 (the CPU engine casts the checkpoint)")
                             + (f"  (--quantization {s.quantization})" if s.quantization else ""))),
            ("dtype", _e(s.dtype)), ("context", f"--max-model-len {s.max_model_len}" + _room(c))]
    if c.device == "gpu":
        rows += [("GPUs", _e(f"{c.gpu_name}  (indices {', '.join(map(str, s.gpu_indices))})")),
                 ("memory use", f"--gpu-memory-utilization {s.gpu_memory_utilization:.2f}"),
                 ("KV cache", _e(s.kv_cache_dtype)), ("image", _e(s.image or "-"))]
    else:
        rows += [("KV cache", f"VLLM_CPU_KVCACHE_SPACE={s.cpu_kv_cache_gib} GiB")]
    if c.confidence:
        rows.append(("figures", _e(f"weights {c.confidence.get('weights', '-')}, "
                                   f"KV cache {c.confidence.get('kv_cache', '-')}")))
    if c.measured:
        import time as _time

        mz = c.measured
        when = _time.strftime("%Y-%m-%d", _time.localtime(mz["recorded_at"]))
        said = [f"weights {mz['weights_gib']:.2f} GiB" if mz.get("weights_gib") else "",
                f"KV cache {mz['kv_tokens']:,} tokens" if mz.get("kv_tokens") else "",
                f"at --max-model-len {mz['max_model_len']}"]
        rows.append(("measured", _e(f"the engine here said on {when}: " + ", ".join(x for x in said if x))))
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    for k, val in rows:
        t.add_row(k, val)
    out.print(t)
    m = c.memory
    if m is not None:
        out.print()
        per = " per GPU" if c.device == "gpu" else ""
        out.print(f"[bold]Memory{per}[/]: budget {gib(m.budget)} of {gib(m.per_device_total)} "
                  f"({gib(m.per_device_free)} free)")
        out.print("  " + _bar(m.terms, m.budget))
        mt = Table(show_header=False, box=None, pad_edge=False)
        mt.add_column()
        mt.add_column(justify="right")
        mt.add_column(style="dim")
        for term in m.terms:
            mt.add_row(f"  {_e(term.name)}", gib(term.bytes), _e(term.note))
        for term in m.outside_budget:
            mt.add_row(f"  + {_e(term.name)}", gib(term.bytes), _e(term.note))
        out.print(mt)
    for line in c.reasons:
        out.print(f"[dim]{_e(line)}[/]")
    for w in c.warnings:
        out.print(f"[yellow]![/] {_e(w)}")
    if report.command:
        out.print(f"\n[bold]up would run[/] ({report.runtime or 'docker'} runtime; the API key and HF token "
                  "come from the environment):")
        out.print(report.command, markup=False, highlight=False, soft_wrap=True)
    alts = r.alternatives(12 if verbose else 6, per_model=4 if r.request.model else 1)
    if alts:
        out.print("\n[bold]Alternatives[/]")
        at = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("model", "precision", "on", "context", "why not chosen"):
            at.add_column(col)
        for a in alts:
            at.add_row(_e(a.model_id), _e(a.variant.precision), _e(a.gpu_name or "CPU"),
                       f"{a.settings.max_model_len:,}" if a.settings else "-", _e(why_lost(a, c)))
        out.print(at)
    if verbose:
        _rejected(out, [x for x in r.candidates if x.fits == "no"][:15])


def _room(c: Any) -> str:
    """How much the KV cache leaves beyond the planned context."""
    m = c.memory
    if m is None or not m.largest_context:
        return ""
    extra = f", {gib(m.headroom_bytes)} of KV cache to spare" if m.headroom_bytes and m.headroom_bytes > 0 else ""
    return f"  [dim](one request could have up to {m.largest_context:,} tokens{extra})[/]"


def _rejected(out: Any, cands: list[Any]) -> None:
    from rich.table import Table

    rows = [x for x in cands if x.fits == "no"]
    if not rows:
        return
    out.print("\n[bold]Does not fit[/]")
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("model", "precision", "why", "needs"):
        t.add_column(col)
    for x in rows:
        t.add_row(_e(x.model_id), _e(x.variant.precision), _e(x.reasons[0] if x.reasons else "-"), _e(x.needs or ""))
    out.print(t)


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def ps_report(report: Any) -> None:
    from rich.table import Table

    out = console()
    if not report.deployments:
        out.print("no deployments (start one with `kanoa-local up`)")
    else:
        t = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("name", "state", "model", "endpoint", "runtime", "uptime"):
            t.add_column(col)
        for d in report.deployments:
            st = {"running": "[green]running[/]", "dead": "[red]dead[/]"}.get(d.state, "[yellow]unknown[/]")
            if d.orphan:
                st += " [yellow](no record)[/]"
            where = d.runtime + (f" on {d.docker_host}" if d.docker_host else "") + (
                f" ({d.nodes} nodes)" if d.nodes > 1 else "")
            t.add_row(_e(d.name), st, _e(d.model), _e(d.base_url), _e(where), _dur(d.uptime_s))
        out.print(t)
        for d in report.deployments:
            if d.state != "running" and d.reason:
                out.print(f"[yellow]![/] {_e(d.name)}: {_e(d.reason)}")
    for p in report.problems:
        out.print(f"[yellow]![/] {_e(p)}")


def status_report(r: Any) -> None:
    from rich.table import Table

    out = console()
    style = {"running": "green", "starting": "yellow", "dead": "red", "unknown": "yellow"}[r.state]
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("deployment", f"{_e(r.name)}  [{style}]{r.state}[/]"
              + ("" if r.healthy or r.state in ("dead", "unknown")
                 else f"  ({_e(r.stage or 'engine starting')}, {_dur(r.uptime_s)} since `up`)")
              + (f"  ({_e(r.reason)})" if r.reason else ""))
    t.add_row("model", _e(r.model))
    t.add_row("endpoint", _e(r.base_url))
    t.add_row("API key", _e(f"{r.api_key_hint}  ({r.deployment.api_key_file})"))
    place = r.deployment.place
    t.add_row("runtime", _e(f"{r.runtime}" + (f"  pid {place.pid}" if getattr(place, "pid", None) else "")
                            + (f"  job {place.job_id}" if getattr(place, "job_id", None) else "")
                            + (f"  on {r.deployment.docker_host}" if r.deployment.docker_host else "")))
    for w in getattr(place, "nodes", [])[1:]:
        t.add_row(f"node {w.rank}", _e(f"{w.address}  on {w.docker_host or 'this machine'}  "
                                       f"container {w.container_id[:12]}"))
    t.add_row("uptime", _dur(r.uptime_s))
    m = r.metrics
    if m is not None:
        def n(x: float | None) -> str:
            return "-" if x is None else f"{x:,.0f}"
        t.add_row("requests", f"{n(m.requests_running)} running, {n(m.requests_waiting)} waiting")
        t.add_row("tokens", f"{n(m.prompt_tokens)} prompt, {n(m.generation_tokens)} generated")
        if r.cost_usd is not None:
            t.add_row("cost", f"${r.cost_usd:.6f} estimated (${r.deployment.cost_per_mtok:.2f} per 1M tokens)")
        if m.kv_cache_usage is not None:
            t.add_row("KV cache", f"{m.kv_cache_usage * 100:.1f} % in use")
    for g in r.gpus:
        t.add_row("GPU", _e(f"{g.name}: {gib(g.memory_used)} of {gib(g.memory_total)} in use"
                            + (f" ({', '.join(g.processes)})" if g.processes else "")))
    out.print(t)


class ByteProgress:
    """A (done, total) bytes callback for pulls and downloads: a rich progress bar on a terminal
    (stderr), else a line every 5 % (logs, CI). ``close()`` ends the bar."""

    def __init__(self, what: str, say: Any, enabled: bool = True) -> None:
        import sys

        self.what, self.say, self.enabled, self.last = what, say, enabled, -5
        self.last_bytes = 0
        self.bar: Any = None
        self.task: Any = None
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.tty:
            if self.bar is None:
                from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                           TransferSpeedColumn)

                self.bar = Progress(TextColumn("  {task.description}"), BarColumn(), DownloadColumn(),
                                    TransferSpeedColumn(), TimeRemainingColumn(), console=console(stderr=True),
                                    transient=False)
                self.bar.start()
                self.task = self.bar.add_task(self.what, total=total or None)
            self.bar.update(self.task, completed=done, total=total or None)
            if total and done >= total:
                self.close()
            return
        if not total:        # size unknown up front: a line every 100 MB
            if done >= self.last_bytes + 100_000_000:
                self.last_bytes = done
                self.say(f"  {self.what}: {done / 1e9:.2f} GB so far")
            return
        pct = int(done * 100 / total)
        if (pct >= self.last + 5 or done == total) and pct != self.last:
            self.last = pct
            self.say(f"  {self.what}: {done / 1e9:.2f} / {total / 1e9:.2f} GB ({pct} %)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
