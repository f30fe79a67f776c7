"""The harness end to end: the tiny model served by the real vLLM CPU engine in a container,
a chat completion through the real `openai` client, `/metrics` counting the tokens."""

from __future__ import annotations

import re

import pytest

from tests.conftest import http

pytestmark = [pytest.mark.docker, pytest.mark.engine]


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+([0-9.eE+-]+)$", line)
        if m:
            total += float(m.group(2))
    return total


def test_chat_completion_through_openai_client_counts_tokens(vllm_container):
    from openai import OpenAI

    ep = vllm_container
    before = http("GET", f"{ep.root}/metrics")[1]
    client = OpenAI(base_url=ep.base_url, api_key=ep.api_key)
    reply = client.chat.completions.create(
        model=ep.model, max_tokens=5,
        messages=[{"role": "user", "content": "Explain the sales trend by region."}])
    assert reply.choices[0].message.content is not None
    assert reply.usage.completion_tokens >= 1 and reply.usage.prompt_tokens > 5
    after = http("GET", f"{ep.root}/metrics")[1]
    grew_prompt = _metric(after, "vllm:prompt_tokens_total") - _metric(before, "vllm:prompt_tokens_total")
    grew_gen = _metric(after, "vllm:generation_tokens_total") - _metric(before, "vllm:generation_tokens_total")
    assert grew_prompt == reply.usage.prompt_tokens
    assert grew_gen == reply.usage.completion_tokens


def test_api_key_guards_v1_but_not_health(vllm_container):
    ep = vllm_container
    status, _ = http("GET", f"{ep.base_url}/models")
    assert status == 401
    status, body = http("GET", f"{ep.base_url}/models", api_key=ep.api_key)
    assert status == 200 and '"tiny"' in body
    assert http("GET", f"{ep.root}/health")[0] == 200


def test_container_is_published_on_loopback_only(vllm_container):
    ports = vllm_container.container.attrs["HostConfig"]["PortBindings"]["8000/tcp"]
    assert all(b["HostIp"] == "127.0.0.1" for b in ports)
