"""The runtime contract: where an engine runs, written once for every place.

A runtime (:mod:`.process`, :mod:`.docker` for one host or several, :mod:`.slurm`, :mod:`.k8s`)
knows how to launch a spec in its place, and for what it launched: whether it is still there
(:class:`Liveness`: alive, dead or *unknown* — a host or scheduler that does not answer is
never "dead"), how to stop it (only what its identity proves is ours), its logs (the engine's
own output, tail and follow), and how to find it again by label without a record
(:meth:`Runtime.discover`). Everything above (plans, weights, readiness, retries, records, the
hand-off) lives in :mod:`kanoa_local.deploy` and is the same for every place.

:class:`Cleanup` is the handle of a start: every step that undoes something is registered as it
is done, and on an error, Ctrl-C, SIGTERM or SIGHUP all of them run — each one even when an
earlier one fails — with further signals held off until they are done.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Iterator, Literal

from pydantic import Field

from ..engine.spec import LaunchSpec
from ..errors import EngineError, Interrupted
from ..hardware import Model
from ..state import Deployment, Place


class Liveness(Model):
    state: Literal["alive", "dead", "unknown"]
    reason: str = Field("", description="dead: what is gone; unknown: which host or scheduler did not answer")

    @property
    def alive(self) -> bool:
        return self.state == "alive"

    @property
    def dead(self) -> bool:
        return self.state == "dead"

    @property
    def unknown(self) -> bool:
        return self.state == "unknown"


ALIVE = Liveness(state="alive")


def combine(states: list[Liveness]) -> Liveness:
    """One verdict for several parts (the nodes of a deployment): unknown wins over dead (a part
    we cannot see may still run), dead over alive (the others cannot serve without it)."""
    for kind in ("unknown", "dead"):
        bad = [s for s in states if s.state == kind]
        if bad:
            return Liveness(state=kind, reason="; ".join(s.reason for s in bad if s.reason))  # type: ignore[arg-type]
    return ALIVE


class Unreachable(EngineError):
    """A host or scheduler did not answer: what runs there is unknown, and nothing is forgotten."""


class Found(Model):
    """Something of this user's found where it runs (by label, job name or environment marker),
    with or without a record."""

    name: str
    place: Place
    model: str = "?"
    port: int | None = None
    listen: str = "127.0.0.1"
    running: bool = True


class Launched:
    """What a runtime started for one attempt, as readiness needs it."""

    def __init__(self, place: Place, *, read_lines: Callable[[], list[str]], alive: Callable[[], bool],
                 exit_info: Callable[[], dict[str, Any]], listen: str | None = None,
                 log_readable: bool = True) -> None:
        self.place, self.read_lines, self.alive, self.exit_info = place, read_lines, alive, exit_info
        self.listen = listen          # where the server is reached, when only the start knows it
        #: False when the engine's output cannot be read from here (a Slurm job's file on its
        #: node): readiness then cannot judge stalls, only the probe and the timeout
        self.log_readable = log_readable


class LaunchRequest(Model):
    """One attempt's launch, the same for every runtime."""

    name: str
    spec: LaunchSpec
    key: str = Field(repr=False, description="the deployment's API key (never stored in the record)")
    labels: dict[str, str] = {}
    gpu_uuids: list[str] | None = None
    python: str | None = None
    timeout: float = 1200
    title: str = ""
    gpus_per_node: int = 0
    nodes: int = 1


class Runtime(ABC):
    kind: ClassVar[str]

    @abstractmethod
    def launch(self, req: LaunchRequest, cleanup: Cleanup, **hooks: Any) -> Launched:
        """Start ``req``; register in ``cleanup`` how to undo each part as soon as it exists."""

    @abstractmethod
    def liveness(self, dep: Deployment) -> Liveness: ...

    @abstractmethod
    def stop(self, name: str, place: Place) -> None:
        """Stop and remove what ``place`` names, as far as identity proves it ours; raise
        :class:`Unreachable` when that cannot be told (nothing is then forgotten)."""

    @abstractmethod
    def logs(self, dep: Deployment, tail: int | None = None) -> list[str]: ...

    @abstractmethod
    def follow(self, dep: Deployment) -> Iterator[str]:
        """New lines of the engine's output as they come (after what :meth:`logs` gave)."""

    @abstractmethod
    def discover(self, hosts: list[Any]) -> tuple[list[Found], list[str]]:
        """This user's deployments where this runtime looks (``hosts``: Docker hosts, ...), and
        the places that did not answer."""

    def close(self) -> None:  # noqa: B027 - optional: only runtimes with clients override it
        """Release clients (one per host per command)."""


# ----------------------------------------------------------------------------- signals


class Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP during a start, raised like Ctrl-C so one cleanup path serves all."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Terminated(Interrupted):
    exit_code = 143


class HungUp(Interrupted):
    exit_code = 129


def interrupted_error(exc: KeyboardInterrupt, what: str) -> Interrupted:
    """The one-line error for an interrupted start (exit 130, 143 for SIGTERM, 129 for SIGHUP)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    cls = {signal.SIGTERM: Terminated, signal.SIGHUP: HungUp}.get(signum, Interrupted)
    how = {signal.SIGTERM: "terminated (SIGTERM)", signal.SIGHUP: "hung up (SIGHUP)"}.get(signum, "interrupted")
    return cls(f"{how}: {what}", remedy=None)


HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While starting, SIGTERM and SIGHUP raise like Ctrl-C does (so the start's cleanup runs).
    A signal the caller ignores (nohup, a background job's SIGINT) stays ignored; outside the
    main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old: dict[int, Any] = {}

    def raise_it(signum: int, _frame: Any) -> None:
        raise Signalled(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        h = signal.getsignal(sig)
        if h is not signal.SIG_IGN:
            old[sig] = h
            signal.signal(sig, raise_it)
    try:
        yield
    finally:
        for num, h in old.items():
            signal.signal(num, h)


@contextlib.contextmanager
def shielded() -> Iterator[list[int]]:
    """Hold off SIGINT, SIGTERM and SIGHUP (they are noted, not acted on): a second Ctrl-C must
    not cut a cleanup short and leave a server running."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    old = {s: signal.getsignal(s) for s in HANDLED}
    for s, h in old.items():
        if h is not signal.SIG_IGN:
            signal.signal(s, lambda signum, _f: pending.append(signum))
    try:
        yield pending
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- cleanup


class Cleanup:
    """The undo steps of one start, run newest first; each is tried even when one fails."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], Any]]] = []
        self.failures: list[str] = []

    def add(self, what: str, undo: Callable[[], Any]) -> None:
        self.steps.append((what, undo))

    def dismiss(self) -> None:
        """The start succeeded: keep everything."""
        self.steps.clear()

    def run(self) -> list[str]:
        """Undo everything; the steps that failed, as 'what: why'."""
        with shielded():
            while self.steps:
                what, undo = self.steps.pop()
                try:
                    undo()
                except Exception as exc:  # noqa: BLE001 - every step is attempted
                    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                    self.failures.append(f"{what}: {msg}")
        return self.failures
