from __future__ import annotations

import re

from kanoa_local import errors


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_exit_code_is_documented():
    doc = errors.__doc__
    for cls in [errors.KanoaError, *_subclasses(errors.KanoaError)]:
        assert re.search(rf"^\s+{cls.exit_code}\s", doc, re.M), cls


def test_redact_hides_tokens(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret123")
    assert errors.redact("bad token hf_supersecret123 here") == "bad token *** here"
    assert errors.redact("key sk-abcdef", ["sk-abcdef"]) == "key ***"
