"""Multi-node on Docker hosts, the parts without a daemon: host lists, addresses, node profiles."""

from __future__ import annotations

import pytest

from kanoa_local.deploy import check_docker_hosts, node_addresses, smallest_node
from kanoa_local.errors import UsageError
from kanoa_local.hardware import what_if
from kanoa_local.probe import load_preset


def test_each_node_on_its_own_docker_host():
    check_docker_hosts([None, "tcp://10.0.0.2:2375", "ssh://me@gpu-b"])
    with pytest.raises(UsageError, match="given twice"):
        check_docker_hosts(["tcp://10.0.0.2:2375", "tcp://10.0.0.2:2375"])
    with pytest.raises(UsageError, match="this machine is given twice"):
        check_docker_hosts([None, "unix:///var/run/docker.sock"])
    with pytest.raises(UsageError, match="not a Docker host URL"):
        check_docker_hosts(["gpu-b", "tcp://10.0.0.2:2375"])


def test_addresses_remote_from_the_url_and_this_machine_by_its_route():
    # loopback peers keep this test off any network: the route's source toward 127.0.0.2 is loopback
    assert node_addresses([None, "tcp://127.0.0.2:2375"]) == ["127.0.0.1", "127.0.0.2"]
    assert node_addresses(["ssh://me@127.0.0.3", None]) == ["127.0.0.3", "127.0.0.1"]
    with pytest.raises(UsageError, match="cannot resolve"):
        node_addresses([None, "tcp://no-such-host.invalid:2375"])


def test_the_plan_fits_the_smallest_node_and_nodes_must_match():
    big, small = load_preset("a100-80g"), what_if(load_preset("a100-80g"), vram_gb=40)
    assert smallest_node([big, small]) is small
    with pytest.raises(UsageError, match="differ in GPUs"):
        smallest_node([big, load_preset("no-driver")])


def test_up_with_bad_docker_host_lists_is_one_line():
    from tests.conftest import run_cli

    for args, words in ((["--docker-host", "tcp://127.0.0.2:2375", "--docker-host", "tcp://127.0.0.2:2375"], "given twice"),
                        (["--docker-host", "local", "--docker-host", "tcp://127.0.0.2:2375", "--target", "slurm"],
                         "--target slurm"),
                        (["--docker-host", "gpu-b", "--docker-host", "local"], "not a Docker host URL")):
        r = run_cli("up", "tiny", *args)
        assert r.returncode == 2, (args, r.stderr)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and words in errors[0] and "Traceback" not in r.stderr


def test_export_takes_docker_urls_as_node_addresses_but_not_the_local_daemon():
    from kanoa_local.export import layout_for
    from kanoa_local.plan import PlanRequest, plan
    from kanoa_local.catalog import load_catalog

    c = plan(load_preset("rtx4090"), load_catalog(user=False),
             PlanRequest(model="llama-3.1-8b", nodes=2, all_nodes=True)).chosen
    lay = layout_for(c, 2, ["ssh://me@gpu-a", "tcp://10.0.0.2:2375"])
    assert lay.hosts == ["gpu-a", "10.0.0.2"]
    with pytest.raises(UsageError, match="this machine's Docker daemon"):
        layout_for(c, 2, ["local", "tcp://10.0.0.2:2375"])


def test_each_api_port_has_its_own_master_port_in_range():
    from kanoa_local.engine.spec import master_port

    assert master_port(8000) == 29501                    # vLLM's default for the usual port
    ports = [master_port(p) for p in range(1024, 65536)]
    assert all(1024 <= m <= 65535 for m in ports)
    assert master_port(50000) != master_port(50001) and master_port(65535) == 44034
