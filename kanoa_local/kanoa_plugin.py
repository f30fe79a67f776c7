"""`kanoa local ...`: kanoa's CLI loads plugins from the entry-point group
``kanoa.cli.commands`` (a ``register(subparsers)`` function, argparse). This one hands every
argument to kanoa-local's own CLI, so `kanoa local up` is `kanoa-local up`: one implementation."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    # no option prefix of its own, so that every argument, `--help` included, reaches kanoa-local
    p = subparsers.add_parser("local", add_help=False, prefix_chars="\x00",
                              help="run a local LLM with kanoa-local (up, status, down, session, doctor, ...)",
                              description="kanoa-local: `kanoa local --help` lists its commands")
    p.add_argument("args", nargs=argparse.REMAINDER, help="a kanoa-local command and its options")
    p.set_defaults(func=_run)


def _run(parsed: Any) -> None:
    from .cli import main

    main(list(parsed.args), prog_name="kanoa local")
