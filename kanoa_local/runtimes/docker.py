"""The Docker runtime: the vLLM image on one Docker host (this machine's or another's) or one
container per host across several (vLLM's native multi-node flags, host networking).

Containers carry kanoa-local's labels — the deployment, the owner (this user, this machine,
this state dir), the node rank — and are found by them on every host on record. One client per
host per command (:class:`Clients`), closed at the end. A daemon that does not answer makes a
deployment *unknown*, never dead.
"""

from __future__ import annotations

from typing import Any, Iterator

from ..backends import docker_api as dk
from ..errors import DockerUnavailable, EngineError
from ..state import Deployment, DockerNode, DockerPlace, elsewhere, owner_id, this_machine
from .base import ALIVE, Cleanup, Found, Launched, LaunchRequest, Liveness, Runtime, Unreachable, combine


def where(host: str | None) -> str:
    return str(host) if dk.is_remote(host) else "this machine's Docker daemon"


def _container_files(spec: Any) -> bytes | None:
    """The tar unpacked in a created container: the key guard, and the TLS files when given."""
    from ..engine import guard, tls

    if not spec.guard_dir:
        return None
    return guard.tar_archive(spec.guard_dir, extra=tls.container_files(spec.tls) if spec.tls else None)


class Clients:
    """One docker-py client per Docker host for the length of a command."""

    def __init__(self) -> None:
        self._c: dict[str | None, Any] = {}

    def get(self, host: str | None) -> Any:
        """The client of ``host`` as recorded: None is this machine's default socket, never
        whatever $DOCKER_HOST says in the shell of the moment."""
        if host not in self._c:
            self._c[host] = dk.client(host=host or dk.LOCAL_SOCKET)
        return self._c[host]

    def close(self) -> None:
        for c in self._c.values():
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._c.clear()


class DockerRuntime(Runtime):
    kind = "docker"

    def __init__(self, nodes: list[tuple[str | None, str | None]] | None = None, listen: str = "127.0.0.1",
                 on_pull: Any = None, tunnel: bool = False) -> None:
        #: (Docker host, node address) of each node to launch on, the head first
        self.nodes = nodes or [(None, None)]
        self.listen, self.on_pull = listen, on_pull
        #: the head is an ssh:// host whose loopback the server stays on: reach it by SSH tunnel
        self.tunnel = tunnel
        self.clients = Clients()

    def close(self) -> None:
        self.clients.close()

    # -------------------------------------------------------------------------------- launch

    def launch(self, req: LaunchRequest, cleanup: Cleanup, **hooks: Any) -> Launched:
        from ..engine.spec import master_port, node_launches

        labels = {**req.labels, dk.OWNER_LABEL: owner_id()}
        multi = len(self.nodes) > 1
        if multi:
            launches: list[tuple[Any, Any]] = node_launches(
                req.spec, deployment=req.name, nodes=[(h, a or "") for h, a in self.nodes], listen=self.listen,
                master_port=master_port(req.spec.port))
        else:
            launches = [(req.spec, None)]
        started: list[DockerNode] = []
        for (node_spec, node), (host, address) in zip(launches, self.nodes):   # the head first
            rank = node.rank if node is not None else 0
            c = self.clients.get(host)
            box: dict[str, str] = {}

            def created(cid: str, c: Any = c, host: str | None = host, box: dict[str, str] = box) -> None:
                box["id"] = cid
                cleanup.add(f"container {cid[:12]} on {where(host)}", lambda: dk.stop_remove(c, cid, timeout=5))

            dk.run_server(c, node_spec, name=req.name if rank == 0 else f"{req.name}-{rank}",
                          secrets_env={"VLLM_API_KEY": req.key}, extra_labels=labels, on_pull=self.on_pull,
                          gpu_uuids=None if multi else req.gpu_uuids, remote=dk.is_remote(host),
                          where=where(host), node=node, on_created=created,
                          files=_container_files(node_spec))
            started.append(DockerNode(rank=rank, docker_host=host, address=address if multi else None,
                                      container_id=box["id"], machine="" if dk.is_remote(host) else this_machine()))
        place = DockerPlace(nodes=started)
        if self.tunnel:
            from . import tunnel

            head_host = self.nodes[0][0]
            assert head_host is not None
            t = tunnel.open_tunnel(head_host, req.spec.port, name=req.name)
            cleanup.add(f"the SSH tunnel to {head_host}", lambda: tunnel.close(req.name, t))
            place = DockerPlace(nodes=started, tunnel=t)
        followers = [(n.rank, dk.ContainerLogFollower(self.clients.get(n.docker_host), n.container_id))
                     for n in started]

        def read_lines() -> list[str]:
            # the workers' lines too, marked: a worker's fatal error is the diagnosis
            return [ln if r == 0 else f"(node {r}) {ln}" for r, f in followers for ln in f()]

        def states() -> list[dict[str, Any]]:
            out = []
            for n in started:
                try:
                    out.append({**dk.container_state(self.clients.get(n.docker_host), n.container_id), "node": n.rank})
                except DockerUnavailable:
                    out.append({"state": "unknown", "node": n.rank})
            return out

        # a daemon blip while waiting is not an exit: only a container seen stopped is
        return Launched(place, read_lines=read_lines,
                        alive=lambda: all(s["state"] in ("running", "unknown") for s in states()),
                        exit_info=lambda: next((s for s in states() if s["state"] != "running"), states()[0]))

    # -------------------------------------------------------------------------------- the contract

    def _node_state(self, n: DockerNode) -> Liveness:
        if elsewhere(n.machine):
            return Liveness(state="unknown", reason=f"its container is on {n.machine}'s Docker daemon: ask there")
        try:
            st = dk.container_state(self.clients.get(n.docker_host), n.container_id)
        except DockerUnavailable as exc:
            return Liveness(state="unknown", reason=f"{where(n.docker_host)} did not answer ({exc.message})")
        if st["state"] == "running":
            return ALIVE
        label = "node " + str(n.rank) + " " if n.rank else ""
        return Liveness(state="dead", reason=f"{label}container {n.container_id[:12]} "
                                             + ("is gone" if st["state"] == "gone" else f"exited ({st['exit_code']})"))

    def liveness(self, dep: Deployment) -> Liveness:
        place = dep.place
        assert isinstance(place, DockerPlace)
        return combine([self._node_state(n) for n in place.nodes])

    def stop(self, name: str, place: Any) -> None:
        """Remove every node's container — the recorded ids and whatever else carries this
        deployment's label and owner on those hosts (none with ``name`` empty: exactly the
        place) — each host tried even when one fails."""
        assert isinstance(place, DockerPlace)
        failed = [f"{n.machine} (its container is on that machine's daemon: run `down` there)"
                  for n in place.nodes if elsewhere(n.machine)]
        for host in dict.fromkeys(n.docker_host for n in place.nodes if not elsewhere(n.machine)):
            try:
                c = self.clients.get(host)
                ids = [n.container_id for n in place.nodes if n.docker_host == host and n.container_id]
                if name:
                    ids += [x["id"] for x in dk.find_servers(c, name, owner=owner_id()) if x["id"] not in ids]
                for cid in ids:
                    dk.stop_remove(c, cid)
            except EngineError as exc:       # unreachable, or the daemon refused: try the other hosts
                failed.append(f"{where(host)} ({exc.message})")
        if place.tunnel is not None or (name and any(dk.is_ssh(h) for h in place.hosts)):
            from . import tunnel

            tunnel.close(name, place.tunnel)   # useless without the server; `up` opens a new one
        if failed:
            raise Unreachable("could not remove the containers on " + "; ".join(failed),
                              remedy="the record is kept: run `kanoa-local down` again once the host answers")

    def logs(self, dep: Deployment, tail: int | None = None) -> list[str]:
        place = dep.place
        assert isinstance(place, DockerPlace)
        lines: list[str] = []
        for n in place.nodes:
            try:
                text = dk.container_logs(self.clients.get(n.docker_host), n.container_id, tail=tail)
            except DockerUnavailable as exc:
                text = f"(the log of node {n.rank} could not be read: {exc.message})"
            if n.rank:
                lines.append(f"--- node {n.rank} ({n.docker_host or 'this machine'})")
            lines += text.splitlines()
        return lines

    def follow(self, dep: Deployment) -> Iterator[str]:
        place = dep.place
        assert isinstance(place, DockerPlace)
        head = place.head
        return dk.follow_logs(self.clients.get(head.docker_host), head.container_id)

    def discover(self, hosts: list[Any]) -> tuple[list[Found], list[str]]:
        """This user's server containers (every state) on ``hosts`` (None: this machine's)."""
        found: list[Found] = []
        unreachable: list[str] = []
        for host in dict.fromkeys([None, *hosts]):
            try:
                ctrs = dk.find_servers(self.clients.get(host), owner=owner_id())
            except DockerUnavailable:
                if host is not None:
                    unreachable.append(where(host))
                continue
            by_name: dict[str, list[dict[str, Any]]] = {}
            for x in ctrs:
                by_name.setdefault(x["labels"].get(dk.DEPLOYMENT_LABEL, x["id"][:12]), []).append(x)
            for name, group in by_name.items():
                group.sort(key=lambda x: int(x["labels"].get("io.kanoa-local.node-rank", "0") or 0))
                head = group[0]
                lab = head["labels"]
                port = lab.get("io.kanoa-local.port", "")
                found.append(Found(
                    name=name, model=lab.get("io.kanoa-local.model", "?"),
                    port=int(port) if port.isdigit() else None,
                    listen=lab.get("io.kanoa-local.listen", "127.0.0.1"),
                    running=all(x["status"] == "running" for x in group),
                    place=DockerPlace(nodes=[DockerNode(rank=int(x["labels"].get("io.kanoa-local.node-rank", "0") or 0),
                                                        docker_host=host, container_id=x["id"]) for x in group])))
        return found, unreachable
