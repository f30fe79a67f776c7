"""Where `up` runs: the rules that turn --host URL, --docker-host (repeated), $DOCKER_HOST, a
cluster file and --target into a runtime, the Docker hosts, the address the server listens on,
and the machine to plan for. The library owns them, so `kanoa_local.up(...)`, `kanoa-local up`
and `kanoa-local plan` agree.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

from pydantic import BaseModel, Field

from ..dockerhosts import bind_address, host_address, is_remote, is_ssh
from ..engine.tls import TlsFiles
from ..errors import DockerUnavailable, KanoaError, UsageError

LOCAL_DOCKER = ("local", "unix://", "npipe://")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Target(BaseModel):
    """Where one `up` goes."""

    runtime: str = Field(description="auto | process | docker | slurm | k8s (auto is settled after planning)")
    docker_hosts: list[str | None] = Field(default_factory=lambda: list[str | None]([None]),
                                           description="one per node, the head first; None: this machine's daemon")
    listen: str = "127.0.0.1"
    tls: TlsFiles | None = Field(None, description="serve HTTPS with this certificate and key (vLLM's --ssl-*)")
    notes: list[str] = []

    @property
    def remote(self) -> bool:
        return any(is_remote(h) for h in self.docker_hosts)

    @property
    def multi(self) -> bool:
        return len(self.docker_hosts) > 1

    @property
    def tunnel(self) -> bool:
        """The head is an ssh:// host and the server stays on its loopback: reached from here
        through an SSH tunnel kanoa-local opens (and closes with the deployment)."""
        return self.runtime == "docker" and is_ssh(self.docker_hosts[0]) and self.listen in LOOPBACK


def resolve_target(*, runtime: str = "auto", target: str = "local", host: str = "127.0.0.1",
                   docker_host: str | None = None, docker_hosts: list[str | None] | None = None,
                   cluster_hosts: list[str] | None = None) -> Target:
    """The one reading of the place options. ``host`` as a URL (tcp://, ssh://) names the Docker
    host; $DOCKER_HOST naming another machine is honoured as --docker-host is; a cluster file
    whose hosts are Docker URLs (or `local`) serves across them."""
    hosts: list[str | None] = [h for h in (docker_hosts or []) if h is not None or len(docker_hosts or []) > 1]
    if docker_host and not hosts:
        hosts = [docker_host]
    if "://" in host:                                  # `up --host ssh://user@gpu-box`
        if hosts:
            raise UsageError("--host is a URL and --docker-host is given too", remedy="give one of them")
        hosts, host = [host], "127.0.0.1"
    if target in ("slurm", "k8s"):
        if hosts:
            raise UsageError(f"--docker-host with --target {target}", remedy="Docker hosts are the local target: drop --target")
        return Target(runtime=target, listen="0.0.0.0" if target == "slurm" else host)
    if not hosts and cluster_hosts and len(cluster_hosts) > 1 and all("://" in h or h == "local" for h in cluster_hosts):
        hosts = list(cluster_hosts)
    if not hosts and os.environ.get("DOCKER_HOST"):
        # the daemon of $DOCKER_HOST now, recorded by its URL (another shell may say otherwise)
        hosts = [os.environ["DOCKER_HOST"]]
    hosts = [None if h in ("local", None) else h for h in hosts] or [None]
    if len(hosts) > 1:
        check_docker_hosts(hosts)
    elif hosts[0] and not is_remote(hosts[0]) and not hosts[0].startswith(LOCAL_DOCKER):
        raise UsageError(f"--docker-host {hosts[0]}: not a Docker host URL",
                         remedy="use tcp://ADDR:2375, ssh://user@host, or `local` for this machine")
    notes = []
    remote_head = is_remote(hosts[0])
    if any(is_remote(h) for h in hosts) or len(hosts) > 1:
        if runtime == "process":
            raise UsageError("a remote or multi-node Docker target runs containers: the process runtime is local only",
                             remedy="drop --runtime process, or --docker-host")
        runtime = "docker"
    if is_ssh(hosts[0]) and host in LOOPBACK:
        host = "127.0.0.1"
        notes.append(f"the server stays on the loopback of {host_address(hosts[0] or '')}; kanoa-local reaches it "
                     "through an SSH tunnel from this machine's loopback, closed with the deployment "
                     "(--host ADDR publishes on an address of that machine instead)")
    elif remote_head and host in LOOPBACK:
        # the remote host's loopback cannot be reached from here: its one address we reach it by
        assert hosts[0] is not None
        try:
            host = bind_address(hosts[0])
        except ValueError as exc:
            raise UsageError(f"cannot tell which address of {hosts[0]} to publish the server on: {exc}",
                             remedy="give --host ADDR (an address of that machine)") from None
        notes.append(f"the server is published on {host} of {host_address(hosts[0])} only "
                     "(--host ADDR for another of its addresses)")
    elif remote_head and host in ("0.0.0.0", "::"):
        notes.append(f"--host {host}: the server is published on every address of {host_address(hosts[0] or '')}, "
                     "over plain HTTP: whoever reaches that machine reaches the port (only /health answers "
                     "without the key); firewall it to the machines that need it")
    if len(hosts) > 1:
        from ..engine.spec import DISTRIBUTED_EXPOSURE

        notes.append(DISTRIBUTED_EXPOSURE)
    return Target(runtime=runtime, docker_hosts=hosts, listen=host, notes=notes)


def choose_runtime(runtime: str, candidate: Any, image: str | None, target: Target | None = None,
                   docker_facts: Callable[[], Any] | None = None, python: str | None = None) -> str:
    """`auto`: the vLLM image for GPU plans (or when an image is named), else a process (an
    interpreter with vLLM). Without a Docker daemon that answers, a GPU plan runs as a process
    only where the interpreter has vLLM; --image, or no such interpreter, is the Docker error —
    never a silent switch that then blames the interpreter. ``docker_facts`` None: assume the
    daemon answers (what `plan` shows)."""
    if runtime != "auto":
        return runtime
    if target is not None and (target.remote or target.multi):
        return "docker"
    if not (candidate.device == "gpu" or image):
        return "process"
    if docker_facts is None:
        return "docker"
    facts = docker_facts()
    if facts.reachable:
        return "docker"
    if not image:
        from ..runtimes.process import check_python, default_python

        try:
            check_python(python or default_python(candidate.device))
            return "process"
        except KanoaError:
            pass
    raise DockerUnavailable(f"the GPU plan runs in the vLLM image, and the Docker daemon does not answer ({facts.reason})",
                            remedy=(facts.detail or "start Docker") + "; or `--runtime process --python PATH` "
                                   "with an interpreter that has vLLM")


def check_docker_hosts(hosts: list[str | None]) -> None:
    """Each node on its own daemon, at most one of them this machine's."""
    seen: set[str] = set()
    for h in hosts:
        key = str(h) if is_remote(h) else "local"
        if key in seen:
            raise UsageError(f"{'this machine' if key == 'local' else h} is given twice: one node per Docker host",
                             remedy="give each node's Docker host once (tcp://ADDR:2375 or ssh://user@host; "
                                    "`local` for this machine's)")
        seen.add(key)
        if h and not is_remote(h) and not h.startswith(LOCAL_DOCKER):
            raise UsageError(f"--docker-host {h}: not a Docker host URL",
                             remedy="use tcp://ADDR:2375, ssh://user@host, or `local` for this machine")


def smallest_node(profiles: list[Any]) -> Any:
    """The node profile a multi-node plan must fit (vLLM splits the work evenly): the one with
    the smallest GPUs, then the least free RAM. Every node must have as many GPUs."""
    gpu_counts = {len(p.gpus) for p in profiles}
    if len(gpu_counts) > 1:
        raise UsageError("the Docker hosts differ in GPUs; a multi-node plan needs identical nodes",
                         remedy="use hosts with the same GPUs, or pass --hardware with one node's profile")
    return min(profiles, key=lambda p: (min((g.memory_total for g in p.gpus), default=0), p.ram_available))


def node_addresses(hosts: list[str | None]) -> list[str]:
    """The address every node is reached by from the others: a remote host's (resolved from its
    URL), and for this machine the source address it uses toward the first remote node."""
    def resolve(h: str) -> str:
        name = host_address(h)
        try:
            return str(socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)[0][4][0])
        except OSError as exc:
            raise UsageError(f"cannot resolve {name} (of {h}): {exc.strerror or exc}",
                             remedy="give the Docker host by an address or a name this machine resolves") from None

    remote = {h: resolve(h) for h in hosts if h and is_remote(h)}
    out = []
    for h in hosts:
        if h in remote:
            out.append(remote[h])
            continue
        peer = next(iter(remote.values()))
        with socket.socket(socket.AF_INET6 if ":" in peer else socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((peer, 9))        # no packet is sent: the kernel picks the route's source
                out.append(s.getsockname()[0])
            except OSError as exc:
                raise UsageError(f"no route from this machine to {peer}: {exc.strerror or exc}",
                                 remedy="check the network between the nodes") from None
    return out


def remote_profile(docker_host: str) -> Any:
    """What planning can know of a remote Docker host without a saved profile: its CPUs and
    memory (from the daemon). A host with the NVIDIA runtime needs its real GPU profile."""
    from ..backends import docker_api as dk
    from ..hardware import CpuFacts, HardwareProfile

    facts = dk.daemon_facts(timeout=10, host=docker_host)
    if not facts.reachable:
        raise DockerUnavailable(f"cannot reach the Docker daemon at {docker_host} ({facts.reason})",
                                remedy=facts.detail or "check the address and that dockerd listens there")
    if "nvidia" in facts.runtimes or facts.nvidia_cdi:
        raise UsageError(f"{docker_host} has GPUs; planning for them needs their profile",
                         remedy="run `kanoa-local check --save host.json` on that host and pass "
                                "--hardware host.json (or --gpu NAME)")
    c = dk.client(timeout=10, host=docker_host)
    try:
        info = c.info()
    finally:
        c.close()
    mem = int(info.get("MemTotal") or 0)
    return HardwareProfile(source=f"docker info of {docker_host}", ram_total=mem,
                           ram_available=int(mem * 0.9), cpu=CpuFacts(count=int(info.get("NCPU") or 1)),
                           disk_path="(remote)", docker=facts)


