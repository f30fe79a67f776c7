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
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / 1024**3:.1f} GiB"


def profile_table(p: "HardwareProfile", verbose: bool = False) -> Any:
    from rich.table import Table

    t = Table(title=f"Machine ({p.source})", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    if p.description:
        t.add_row("profile", p.description)
    if p.gpus:
        for g in p.gpus:
            link = "?"
            if g.pcie.max_gen:
                link = f"PCIe {g.pcie.max_gen}.0 x{g.pcie.max_width} max"
                if g.pcie.current_gen:
                    link += f" (now {g.pcie.current_gen}.0 x{g.pcie.current_width})"
            t.add_row(f"GPU {g.index}", f"{g.name}  {gib(g.memory_total)} "
                      f"({gib(g.memory_free)} free)  cc {g.cc_text}  {link}")
            if verbose:
                t.add_row("", f"uuid {g.uuid}" + ("  MIG slice" if g.is_mig_slice else ""))
                for n in g.notes:
                    t.add_row("", f"[dim]{n.field}: {n.message}[/]")
    else:
        t.add_row("GPU", f"none ({p.nvml_error or 'no NVIDIA GPU found'})")
    if p.driver_version:
        t.add_row("driver", f"{p.driver_version} (CUDA {p.cuda_driver_text or '?'})")
    t.add_row("CPU", f"{p.cpu.count} × {p.cpu.model or '?'}"
              + (f"  [{' '.join(p.cpu.flags)}]" if verbose and p.cpu.flags else ""))
    t.add_row("RAM", f"{gib(p.ram_total)} ({gib(p.ram_available)} available)")
    t.add_row("disk", f"{gib(p.disk_free)} free at {p.disk_path}")
    if p.docker is not None:
        d = p.docker
        t.add_row("Docker", f"server {d.server_version}, runtimes: {', '.join(d.runtimes) or '-'}"
                  if d.reachable else f"not reachable ({d.reason})")
    if verbose:
        for n in p.notes:
            t.add_row("note", f"[dim]{n.field}: {n.message}[/]")
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
        t.add_row(_MARK[item.status], item.title, item.detail)
        if item.remedy and item.status in ("fail", "warn"):
            t.add_row("", "", f"[dim]→ {item.remedy}[/]")
    out.print(t)
    out.print()
    out.print(f"[{_VERDICT_STYLE[report.verdict]}]{report.summary}[/]  "
              f"[dim](exit {report.exit_code})[/]")
