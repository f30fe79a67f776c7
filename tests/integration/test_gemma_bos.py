"""The packaged Gemma 3 270M is the model Google published: its prompts start with BOS on
/v1/completions and on chat, and a plain English sentence reads as English to it.

Measured with transformers on the converted checkpoint, a plain sentence has perplexity ~10
with BOS and ~580 without: a bound of 60 separates the two by a wide margin on each side, so a
tokenizer that drops BOS again fails here, while the engine's float32 numerics (or another
sentence of ordinary English) do not. The same sentence without BOS is measured too, on the
same engine, to show the bound discriminates.
"""

from __future__ import annotations

import json
import math

import pytest

from kanoa_local.deploy import UpResult
from tests.conftest import free_port, http, run_cli

pytestmark = pytest.mark.engine

SENTENCE = ("The committee will meet on Monday morning to discuss the budget for next year, "
            "and every member is asked to bring the figures from their own department.")
BOUND = 60.0
BOS_ID = 2


def perplexity(logprobs: list[float]) -> float:
    return math.exp(-sum(logprobs) / len(logprobs))


def test_prompts_start_with_bos_and_read_as_english(cpu_venv, gemma_model):
    r = run_cli("up", "gemma-3-270m", "--cpu", "--offline", "--python", str(cpu_venv / "bin" / "python"),
                "--name", "bos", "--port", str(free_port()), "--json", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = UpResult.model_validate_json(r.stdout)
    key = open(res.api_key_file).read().strip()
    root = res.base_url.removesuffix("/v1")
    model = res.deployment.served_model_name

    def post(path: str, body: dict) -> dict:
        status, text = http("POST", root + path, body, api_key=key, timeout=300)
        assert status == 200, (path, status, text[:500])
        return json.loads(text)

    try:
        if True:
            # what vLLM tokenizes: BOS first, once, for a plain prompt and for chat
            plain = post("/tokenize", {"model": model, "prompt": SENTENCE})["tokens"]
            assert plain[0] == BOS_ID and plain.count(BOS_ID) == 1
            chat = post("/tokenize", {"model": model, "add_generation_prompt": True,
                                         "messages": [{"role": "user", "content": SENTENCE}]})
            assert chat["tokens"][0] == BOS_ID and chat["tokens"].count(BOS_ID) == 1

            def completion_ppl(bos: bool) -> float:
                body = {"model": model, "prompt": SENTENCE, "max_tokens": 1, "echo": True, "logprobs": 0,
                        "add_special_tokens": bos}
                lp = post("/v1/completions", body)["choices"][0]["logprobs"]
                first = 1 if bos else 0                 # BOS itself has no log-prob
                n = len(plain) - 1                      # the sentence's tokens (without BOS)
                values = lp["token_logprobs"][first:first + n]
                return perplexity([v for v in values if v is not None])

            with_bos, without = completion_ppl(True), completion_ppl(False)
            assert with_bos < BOUND < without, (with_bos, without)

            # chat: the sentence's own tokens inside the turn, scored by the engine's prompt log-probs
            body = {"model": model, "max_tokens": 1, "prompt_logprobs": 0,
                    "messages": [{"role": "user", "content": SENTENCE}]}
            out = post("/v1/chat/completions", body)
            ids = chat["tokens"]
            words = plain[2:]        # the first word may merge with the turn's newline: from the second
            start = next(i for i in range(len(ids)) if ids[i:i + len(words)] == words)
            entries = out["prompt_logprobs"][start:start + len(words)]
            chat_ppl = perplexity([e[str(t)]["logprob"] for e, t in zip(entries, words)])
            assert chat_ppl < BOUND, chat_ppl
    finally:
        run_cli("down", "bos")
