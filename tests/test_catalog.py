"""The model matrix: the bundled file validates and holds every seed model; broken files give
one-line errors naming the file and the key; user files merge over the bundled one."""

from __future__ import annotations

import textwrap

import pytest

from kanoa_local.catalog import PRECISIONS, load_catalog
from kanoa_local.errors import ConfigError, UsageError

# Every model and size on the seed page (tested + theoretical tables), as catalog ids.
SEED_MODELS = [
    "molmo-7b-d", "gemma-3-12b", "llama-3.2-11b-vision", "llama-3.2-90b-vision", "llama-4-scout",
    "llama-4-maverick", "qwen2.5-vl-3b", "qwen2.5-vl-7b", "qwen2.5-vl-72b", "qwen3-vl-2b",
    "qwen3-vl-4b", "qwen3-vl-32b", "qwen3-vl-235b", "internvl3-1b", "internvl3.5-1b",
    "internvl3.5-4b", "internvl3-8b", "internvl3.5-8b", "internvl2.5-26b", "internvl3-78b",
    "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "mistral-7b", "mixtral-8x7b",
]


def test_bundled_matrix_holds_every_seed_model():
    cat = load_catalog(user=False)
    for mid in SEED_MODELS:
        entry = cat.models[mid]
        assert entry.arch is not None, mid
        assert any(v.repo for v in entry.variants), mid
        assert entry.seed_vram_gb, mid
    assert {m.status for m in cat.models.values()} <= {"verified", "testing", "planned", "theoretical"}
    # the offline CPU model ships as a package
    assert any(v.package for v in cat.models["gemma-3-270m"].variants)


def test_every_variant_is_a_known_precision_with_a_real_looking_repo():
    for entry in load_catalog(user=False).models.values():
        for v in entry.variants:
            assert v.precision in PRECISIONS
            if v.repo:
                org, _, name = v.repo.partition("/")
                assert org and name and " " not in v.repo, v.repo


def test_facts_the_planner_relies_on():
    cat = load_catalog(user=False)
    assert cat.get("llama-3.2-11b-vision").vllm_max == "0.10.2"
    assert cat.get("molmo").trust_remote_code and cat.get("internvl3-8b").trust_remote_code
    assert cat.get("gemma-3-12b").gated and not cat.get("qwen2.5-vl-7b").gated
    g = cat.get("gemma-3-12b").arch
    assert g is not None and (g.sliding_layers, g.sliding_window, g.full_layers) == (40, 1024, 8)
    scout = cat.get("llama-4-scout")
    assert scout.active_params_b == 17 and scout.params_b == 109


@pytest.mark.parametrize("case_name,name,expected", [
    ("id", "qwen3-vl-4b", "qwen3-vl-4b"),
    ("alias", "molmo", "molmo-7b-d"),
    ("repo id, any case", "qwen/qwen2.5-vl-7b-instruct-awq", "qwen2.5-vl-7b"),
])
def test_lookup(case_name, name, expected):
    assert load_catalog(user=False).get(name).id == expected


def test_unknown_model_suggests_the_closest():
    with pytest.raises(UsageError) as e:
        load_catalog(user=False).get("qwen3-vl-44b")
    assert "qwen3-vl-4b" in (e.value.remedy or "")


def _write(tmp_path, text: str):
    p = tmp_path / "mine.toml"
    p.write_text(textwrap.dedent(text))
    return p


HEAD = textwrap.dedent("""
    [models.x]
    name = "X"
    family = "x"
    params_b = 7
    vision = false
    status = "theoretical"
    """)


@pytest.mark.parametrize("case_name,text,where", [
    ("not TOML", "[models.x\n", "not valid TOML"),
    ("wrong type", HEAD.replace("params_b = 7", 'params_b = "seven"') + """
        variants = [{ precision = "bf16", repo = "a/b" }]
        """, "models.x.params_b"),
    ("unknown key", HEAD + """
        colour = "blue"
        variants = [{ precision = "bf16", repo = "a/b" }]
        """, "models.x.colour"),
    ("bad precision", HEAD + """
        variants = [{ precision = "awq4", repo = "a/b" }]
        """, "models.x.variants[0].precision"),
    ("two sources", HEAD + """
        variants = [{ precision = "bf16", repo = "a/b", path = "/c" }]
        """, "models.x.variants[0]"),
    ("bad arch", HEAD + """
        arch = { layers = 4, heads = 6, kv_heads = 4, head_dim = 64, hidden = 384, vocab = 100, max_context = 2048 }
        variants = [{ precision = "bf16", repo = "a/b" }]
        """, "models.x.arch"),
    ("top-level junk", "colour = 1\n", "unknown top-level key"),
    ("model not a table", "[models]\nx = 3\n", "models.x: should be a table"),
])
def test_broken_file_names_file_and_key(tmp_path, case_name, text, where):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_catalog([p], user=False)
    msg = str(e.value)
    assert msg.startswith("mine.toml: "), msg
    assert where in msg, msg
    assert "\n" not in msg


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        load_catalog([tmp_path / "nope.toml"], user=False)


def test_user_file_adds_a_variant_and_a_model(tmp_path, monkeypatch):
    from kanoa_local.catalog import user_models_file

    path = user_models_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent("""
        [models.molmo-7b-d]
        variants = [{ precision = "awq", path = "/data/molmo-awq" }]

        [models.my-model]
        name = "Mine"
        family = "llama"
        params_b = 1.2
        vision = false
        status = "theoretical"
        arch = { layers = 16, heads = 32, kv_heads = 8, head_dim = 64, hidden = 2048, vocab = 128256, max_context = 8192 }
        variants = [{ precision = "bf16", path = "/data/mine" }]
        """))
    cat = load_catalog()
    molmo = cat.get("molmo-7b-d")
    assert [v.precision for v in molmo.variants][-1] == "awq"
    assert len(molmo.variants) == 3 and molmo.arch is not None   # bundled fields kept
    assert cat.get("my-model").source_file == "models.toml"
    assert str(path) in cat.sources
    assert "my-model" not in load_catalog(user=False).models
