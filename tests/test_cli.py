"""The real `kanoa-local` entry point in a subprocess: exit codes, JSON, one-line errors."""

from __future__ import annotations

import json

import pytest

from kanoa_local.check import CheckReport
from tests.conftest import in_private_mount, run_cli


def assert_one_line_error(r, code: int, *words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("Error: ") and len(lines) <= 2, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_version_and_help_list_exit_codes():
    r = run_cli("--version")
    assert r.returncode == 0 and "kanoa-local" in r.stdout
    r = run_cli("check", "--help")
    assert r.returncode == 0
    assert "10  check: CPU only" in r.stdout and "11 check: GPU not ready" in r.stdout


def test_check_json_parses_back_into_the_model_and_matches_exit_code():
    r = run_cli("check", "--json", "--gpu", "h100-lent")
    report = CheckReport.model_validate_json(r.stdout)
    assert r.returncode == report.exit_code
    assert report.profile.gpus[0].name == "NVIDIA H100 80GB HBM3"


def test_check_this_machine_json():
    r = run_cli("check", "--json")
    report = CheckReport.model_validate_json(r.stdout)
    assert r.returncode == report.exit_code in (0, 10, 11, 12)


def test_save_then_check_the_saved_file(tmp_path):
    f = tmp_path / "sub" / "me.json"
    r = run_cli("check", "--save", str(f), "--json")
    saved = json.loads(f.read_text())
    assert saved["kind"] == "kanoa-local.hardware-profile"
    r2 = run_cli("check", "--hardware", str(f), "--json")
    a, b = CheckReport.model_validate_json(r.stdout), CheckReport.model_validate_json(r2.stdout)
    assert a.verdict == b.verdict and r.returncode == r2.returncode
    assert b.profile.source == str(f)


@pytest.mark.parametrize("case_name, content, words", [
    ("not json", "this is not json{", "not valid JSON"),
    ("json list", "[1, 2]", "expected a JSON object"),
    ("wrong kind", '{"kind": "something-else"}', "not a kanoa-local hardware profile"),
    ("no kind", '{"gpus": []}', "not a kanoa-local hardware profile"),
    ("bad field", '{"kind": "kanoa-local.hardware-profile", "ram_total": "lots", '
                  '"ram_available": 1, "cpu": {"count": 2}, "disk_path": "/"}', "ram_total"),
    ("missing field", '{"kind": "kanoa-local.hardware-profile", "ram_available": 1, '
                      '"cpu": {"count": 2}, "disk_path": "/"}', "ram_total"),
    ("unknown field", '{"kind": "kanoa-local.hardware-profile", "ram_total": 1, "ram_available": 1, '
                      '"cpu": {"count": 2}, "disk_path": "/", "vram": 3}', "vram"),
    ("recording with bad device", '{"kind": "kanoa-local.nvml-recording", "devices": [5]}',
     "recording"),
    ("binary", b"\xff\xfe\x00garbage".decode("latin-1"), "me.json"),
])
def test_bad_profile_file_gives_one_line_error(tmp_path, case_name, content, words):
    f = tmp_path / "me.json"
    f.write_text(content, encoding="latin-1")
    r = run_cli("check", "--hardware", str(f))
    assert_one_line_error(r, 3, str(f), words)


def test_missing_profile_file_and_directory(tmp_path):
    assert_one_line_error(run_cli("check", "--hardware", str(tmp_path / "nope.json")), 3, "no such file")
    assert_one_line_error(run_cli("check", "--hardware", str(tmp_path)), 3, "directory")


def test_bad_profile_with_json_flag_gives_json_error(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text("{")
    r = run_cli("check", "--hardware", str(f), "--json")
    assert r.returncode == 3
    err = json.loads(r.stdout)["error"]
    assert err["type"] == "ConfigError" and err["remedy"] and err["exit_code"] == 3


def test_unknown_gpu_name_suggests_the_close_one():
    assert_one_line_error(run_cli("check", "--gpu", "h100-lnt"), 2, "did you mean h100-lent")


def test_unknown_option_is_a_one_line_usage_error():
    assert_one_line_error(run_cli("check", "--frobnicate"), 2, "--frobnicate")


def test_debug_shows_the_traceback(tmp_path):
    r = run_cli("--debug", "check", "--hardware", str(tmp_path / "nope.json"))
    assert r.returncode == 3 and "Traceback" in r.stderr


def test_save_to_unwritable_place_is_one_line_and_leaves_nothing(tmp_path):
    """A real read-only file system (root writes through permission bits, so chmod proves nothing)."""
    import sys

    target = tmp_path / "ro"
    r = in_private_mount(target, "mount -o remount,ro {d}",
                         [sys.executable, "-m", "kanoa_local", "check", "--gpu", "h100-lent", "--save",
                          str(target / "x" / "p.json")], after="ls -A {d} | wc -l")
    assert r.returncode == 0                       # the `after` step's status
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("Error: ") and "cannot write" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "0"          # nothing half-written left there


def test_bandwidth_on_a_recorded_profile_says_why_not():
    r = run_cli("check", "--gpu", "h100-lent", "--bandwidth", "--json")
    report = CheckReport.model_validate_json(r.stdout)
    assert report.bandwidth is not None and not report.bandwidth.ran
    assert "recorded profile" in report.bandwidth.reason


def test_bandwidth_on_this_machine_says_why_it_cannot_run():
    """Live: on a GPU-less machine the reason is the missing GPU; with a GPU but no NVIDIA
    runtime it would be Docker's own 'could not select device driver' (tests/integration)."""
    r = run_cli("check", "--bandwidth", "--json")
    report = CheckReport.model_validate_json(r.stdout)
    bw = report.bandwidth
    if report.profile.gpus:
        pytest.skip("this machine has a GPU; see tests/gpu")
    assert bw is not None and not bw.ran and "no NVIDIA GPU" in bw.reason and bw.remedy
    item = next(i for i in report.items if i.id == "bandwidth")
    assert item.status == "skip" and "no NVIDIA GPU" in item.detail


def test_bare_command_prints_help_and_succeeds():
    r = run_cli()
    assert r.returncode == 0 and "Commands:" in r.stdout and "check" in r.stdout


def test_empty_hardware_path_is_a_usage_error_not_a_probe():
    assert_one_line_error(run_cli("check", "--hardware", ""), 2, "--hardware needs a file name")


def test_json_before_the_command_works_too():
    r = run_cli("--json", "check", "--gpu", "t4")
    assert CheckReport.model_validate_json(r.stdout).verdict == "gpu-ready"


# ----------------------------------------------------------------------------- models / plan


def test_models_json_parses_back_and_filters():
    from kanoa_local.plan.matrix import ModelsReport

    r = run_cli("models", "--gpu", "l4", "--json")
    assert r.returncode == 0, r.stderr
    report = ModelsReport.model_validate_json(r.stdout)
    assert len(report.models) >= 25
    r = run_cli("models", "--gpu", "l4", "--vision", "--fits", "--json")
    rows = ModelsReport.model_validate_json(r.stdout).models
    assert rows and all(m.vision and m.fits != "no" for m in rows)


def test_plan_json_parses_back_with_the_command():
    from kanoa_local.engine.spec import PlanReport

    r = run_cli("plan", "gemma-3-12b", "--gpu", "l4", "--json")
    assert r.returncode == 0, r.stderr
    report = PlanReport.model_validate_json(r.stdout)
    assert report.plan.chosen.variant.precision != "bf16"      # 24 GiB of bf16 weights: not on an L4
    assert report.command and "vllm/vllm-openai" in report.command


def test_plan_human_view_shows_breakdown_and_alternatives():
    r = run_cli("plan", "--gpu", "rtx5080-egpu")
    assert r.returncode == 0, r.stderr
    for text in ("Memory per GPU", "weights", "KV cache", "up would run", "Alternatives"):
        assert text in r.stdout


def test_plan_for_a_pip_installed_engine_without_flashinfer():
    """A pip install of vLLM 0.9-0.11.0 has no FlashInfer: its sampler sorts the vocabulary in the
    profiling pass (more memory, a shorter KV cache); the images have it. `plan` asks that question."""
    from kanoa_local.engine.spec import PlanReport

    def plan(*extra: str):
        r = run_cli("plan", "llama-3.1-8b", "--gpu", "rtx3090", "--vllm-version", "0.10.2",
                    "--max-model-len", "32768", "--json", *extra)
        assert r.returncode == 0, r.stderr
        return PlanReport.model_validate_json(r.stdout).plan.chosen.memory

    image, pip = plan(), plan("--no-flashinfer")
    act_image, act_pip = (next(t for t in m.terms if t.name == "activations") for m in (image, pip))
    assert "sorted by the sampler" in act_pip.note and "sorted" not in act_image.note
    assert act_pip.bytes > act_image.bytes and pip.kv_bytes < image.kv_bytes


def test_plan_what_if_and_strict():
    r = run_cli("plan", "llama-3.1-70b", "--gpu", "rtx4090", "--gpus", "2", "--json")
    from kanoa_local.engine.spec import PlanReport

    assert PlanReport.model_validate_json(r.stdout).plan.chosen.settings.tensor_parallel_size == 2
    r = run_cli("plan", "llama-3.1-405b", "--gpu", "t4", "--strict")
    assert r.returncode == 5
    assert r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    r = run_cli("plan", "llama-3.1-405b", "--vram", "16", "--json")   # one model asked: nothing-fits code
    assert r.returncode == 5 and '"chosen": null' in r.stdout
    # a precision asked for that cannot be had: said in the default view, what fits instead, exit 5
    r = run_cli("plan", "--gpu", "l4", "--quant", "nvfp4")
    assert r.returncode == 5 and "NVFP4 (Blackwell) is not possible here; instead:" in r.stdout
    assert r.stderr.startswith("Error: NVFP4 (Blackwell) is not possible on") and "compute capability" in r.stderr
    r = run_cli("plan", "--gpu", "l4", "--quant", "nvfp4", "--json")
    assert r.returncode == 5 and json.loads(r.stdout)["plan"]["unmet"].startswith("NVFP4")


def test_plan_errors_are_one_line():
    r = run_cli("plan", "qwen3-vl-44b")
    assert r.returncode == 2 and "did you mean qwen3-vl-4b" in r.stderr
    r = run_cli("plan", "--quant", "awq4")
    assert r.returncode == 2 and "unknown precision" in r.stderr


def test_broken_models_file_is_exit_3_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.x]\nname = "X"\nfamily = "x"\nparams_b = "big"\nvision = false\n'
                   'status = "theoretical"\nvariants = [{ precision = "bf16", repo = "a/b" }]\n')
    r = run_cli("models", "--models", str(bad))
    assert r.returncode == 3
    assert r.stderr.splitlines()[0] == "Error: bad.toml: models.x.params_b: Input should be a valid number, unable to parse string as a number"
    assert "Traceback" not in r.stderr


def test_check_includes_a_verdict_per_model():
    from kanoa_local.check import CheckReport

    r = run_cli("check", "--gpu", "rtx5080-egpu", "--json")
    report = CheckReport.model_validate_json(r.stdout)
    molmo = next(m for m in report.models if m.id == "molmo-7b-d")
    assert molmo.fits != "no" and molmo.best.startswith("bnb-4bit")


def test_plan_a_local_checkpoint_directory(tmp_path):
    import json

    d = tmp_path / "my-ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 128256, "max_position_embeddings": 8192, "intermediate_size": 8192}))
    r = run_cli("plan", str(d), "--gpu", "l4", "--json")
    assert r.returncode == 0, r.stderr
    assert '"model_id": "my-ckpt"' in r.stdout


def test_byte_progress_off_a_terminal_is_a_line_every_5_percent():
    from kanoa_local.render import ByteProgress

    said: list[str] = []
    p = ByteProgress("weights", said.append)
    for done in range(0, 1001, 10):
        p(done * 10**6, 10**9)
    p.close()
    assert said[0] == "  weights: 0.00 / 1.00 GB (0 %)" and said[-1].endswith("(100 %)") and len(said) == 21
    quiet: list[str] = []
    ByteProgress("weights", quiet.append, enabled=False)(1, 2)
    assert quiet == []


def test_names_and_labels_with_brackets_are_shown_as_written(tmp_path):
    """rich reads [x] as markup: a model's name, repo or the "closest: id [precision]" line would
    lose it, and a name with [/] in it would stop the view. The views show data as it is."""
    models = tmp_path / "models.toml"
    models.write_text('[models."odd-x"]\nname = "Odd [beta] [/] model"\nfamily = "llama"\nparams_b = 8.03\n'
                      'status = "theoretical"\nvision = false\n[models."odd-x".arch]\nlayers = 32\nhidden = 4096\n'
                      'heads = 32\nkv_heads = 8\nhead_dim = 128\nvocab = 128256\nmax_context = 131072\n'
                      '[[models."odd-x".variants]]\nprecision = "bf16"\nrepo = "someone/odd-[x]"\n')
    r = run_cli("plan", "odd-x", "--models", str(models), "--no-user-models", "--gpu", "l4")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "Odd [beta] [/] model (bfloat16" in r.stdout and "someone/odd-[x]" in r.stdout, r.stdout
    r = run_cli("plan", "--gpu", "l4", "--max-model-len", "200000", "--no-user-models")
    assert r.returncode == 0 and "closest: " in r.stdout, r.stdout
    closest = r.stdout.split("closest: ", 1)[1].split(",", 1)[0]
    assert closest.endswith("]") and " [" in closest, r.stdout


def test_a_bad_deployment_name_is_said_before_any_daemon_is_asked():
    """`up --name ../x` is a usage error (exit 2) whatever state Docker is in: here its daemon
    refuses the connection, which would otherwise be the first thing said (exit 6)."""
    r = run_cli("up", "--name", "../x", "--runtime", "docker", env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert_one_line_error(r, 2, "bad deployment name '../x'")
