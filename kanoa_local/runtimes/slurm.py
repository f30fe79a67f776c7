"""The Slurm runtime: the rendered sbatch script submitted as this user's job, the server reached
on the head node. The job carries ``kanoa-local:OWNER`` as its comment, which is how it is found
without a record. A controller that does not answer makes a job *unknown*: nothing is cancelled
or forgotten on a guess.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..backends import slurm_cli as sl
from ..engine.ready import StageEvent
from ..errors import EngineStartError
from ..settings import state_dir
from ..state import Deployment, SlurmPlace, log_path, owner_id, write_atomic
from .base import ALIVE, Cleanup, Found, Launched, LaunchRequest, Liveness, Runtime, Unreachable
from .process import LogFollower, follow_file, read_tail

COMMENT = "kanoa-local:"


class SlurmRuntime(Runtime):
    kind = "slurm"

    def __init__(self, on_stage: Callable[[StageEvent], None] | None = None) -> None:
        self.on_stage = on_stage

    def launch(self, req: LaunchRequest, cleanup: Cleanup, **hooks: Any) -> Launched:
        from ..export.slurm import script

        folder = state_dir() / "slurm"
        path = folder / f"kanoa-{req.name}.sbatch"
        text = script(name=req.name, title=req.title or f"{req.name} (kanoa-local up)", nodes=req.nodes,
                      gpus_per_node=req.gpus_per_node, argv=list(req.spec.argv), env=dict(req.spec.env),
                      port=req.spec.port, file_name=path.name)
        write_atomic(path, text, mode=0o700)
        log = log_path(req.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)       # Slurm creates it where the job runs
        env = {"VLLM_API_KEY": req.key}
        if req.python:
            env["KANOA_VLLM_PYTHON"] = req.python
        job_id = sl.submit(path, log_file=log, env=env, job_name=f"kanoa-{req.name}",
                           comment=COMMENT + owner_id())
        cleanup.add(f"Slurm job {job_id}", lambda: sl.cancel(job_id))
        place = SlurmPlace(job_id=job_id, log_file=str(log))
        if hooks.get("on_placed"):
            hooks["on_placed"](place)          # on record while the job waits in the queue
        head = self._wait_for_nodes(job_id, timeout=req.timeout)

        def alive() -> bool:
            try:
                return sl.job(job_id)["state"] in sl.ACTIVE
            except sl.SchedulerUnavailable:
                return True             # a controller blip is not an exit

        def exit_info() -> dict[str, Any]:
            try:
                return {"job": sl.job(job_id)}
            except sl.SchedulerUnavailable as exc:
                return {"job": {"state": "UNKNOWN", "reason": exc.message}}

        # the output file is written on the head node: seen here only on a shared file system
        deadline = time.monotonic() + 10
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        return Launched(place, read_lines=LogFollower(log), alive=alive, exit_info=exit_info, listen=head,
                        log_readable=log.exists())

    def _wait_for_nodes(self, job_id: str, *, timeout: float) -> str:
        """Wait while the job is queued; the head node's address once it runs."""
        t0 = time.monotonic()
        said = ""
        while time.monotonic() - t0 < timeout:
            try:
                j = sl.job(job_id)
            except sl.SchedulerUnavailable as exc:
                j = {"state": "PENDING", "nodes": "", "reason": f"controller not answering: {exc.message}"}
            if j["state"] == "RUNNING" and j["nodes"]:
                return sl.head_address(j["nodes"])
            if j["state"] not in sl.ACTIVE:
                raise EngineStartError(f"Slurm job {job_id} ended before it ran ({j['state'].lower() or 'gone'})",
                                       remedy=f"see its log (`kanoa-local logs`) and `sacct -j {job_id}`")
            msg = f"queued ({j['reason']})" if j["reason"] and j["reason"] != "None" else j["state"].lower()
            if msg != said and self.on_stage is not None:
                self.on_stage(StageEvent(stage=f"Slurm job {job_id} {msg}", at_s=round(time.monotonic() - t0, 1)))
                said = msg
            time.sleep(1)
        raise EngineStartError(f"Slurm job {job_id} did not start within {timeout:.0f} s",
                               remedy="the queue is busy: try again later, or ask for fewer GPUs/nodes")

    def liveness(self, dep: Deployment) -> Liveness:
        place = dep.place
        assert isinstance(place, SlurmPlace)
        try:
            j = sl.job(place.job_id)
        except sl.SchedulerUnavailable as exc:
            return Liveness(state="unknown", reason=exc.message)
        st = j["state"]
        if j.get("name") and j["name"] != f"kanoa-{dep.name}":
            return Liveness(state="dead", reason=f"Slurm job {place.job_id} is another job now")
        if st in sl.ACTIVE:
            return ALIVE
        return Liveness(state="dead", reason=f"Slurm job {place.job_id} is {st.lower()}")

    def stop(self, name: str, place: Any) -> None:
        assert isinstance(place, SlurmPlace)
        try:
            sl.cancel(place.job_id, job_name=f"kanoa-{name}" if name else None)
        except sl.SchedulerUnavailable as exc:
            raise Unreachable(f"could not cancel Slurm job {place.job_id}: {exc.message}",
                              remedy="the record is kept: run `kanoa-local down` again once slurmctld "
                                     f"answers (or `scancel {place.job_id}`)") from exc

    def logs(self, dep: Deployment, tail: int | None = None) -> list[str]:
        place = dep.place
        assert isinstance(place, SlurmPlace)
        p = Path(place.log_file)
        if not p.exists():
            return [f"(the job's output {p} is not visible from this machine: it is on the head node)"]
        return read_tail(p, tail)

    def follow(self, dep: Deployment) -> Iterator[str]:
        assert isinstance(dep.place, SlurmPlace)
        return follow_file(Path(dep.place.log_file), lambda: not self.liveness(dep).dead)

    def discover(self, hosts: list[Any] | None = None) -> tuple[list[Found], list[str]]:
        import shutil

        if shutil.which("squeue") is None:
            return [], []
        try:
            jobs = sl.my_jobs(COMMENT + owner_id())
        except sl.SchedulerUnavailable:
            return [], ["the Slurm controller"]
        except Exception:  # noqa: BLE001 - no cluster configured here: nothing to find
            return [], []
        out = []
        for j in jobs:
            name = j["name"][len("kanoa-"):] if j["name"].startswith("kanoa-") else j["name"]
            out.append(Found(name=name, place=SlurmPlace(job_id=j["id"], log_file=str(log_path(name))),
                             running=j["state"] in sl.ACTIVE))
        return out, []
