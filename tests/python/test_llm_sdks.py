"""The official `openai` and `anthropic` Python SDKs through Sentinel's LLM egress, against the mock
provider (`target/debug/mock_llm`).

What an app sees: responses and streams parse in the SDKs' own types (Sentinel's injected usage
chunk never shows up as a chunk without choices); budget refusals are a 402 the SDK does not
retry; bad keys are `AuthenticationError`; a provider's 429 keeps its `retry-after`; a stream
cut mid-way fails in the SDK. What the tenant pays: every call's charge in Sentinel's log
(`settled … charged=$…`) is exactly the price of the usage the mock reported, settled once; a
cut stream is settled once, estimated, never at zero.

Fixtures (`mock_llm`, `llm_egress`) and the price arithmetic are in conftest.py. The mock and
Sentinel are shared by the session; each test clears the mock first and counts only the
settlements logged after it started.
"""

from __future__ import annotations

import re
import time

import anthropic
import openai
import pytest
from conftest import (
    LLM_ANTHROPIC_KEY,
    LLM_CLAUDE,
    LLM_EMBED,
    LLM_GPT,
    LLM_OPENAI_KEY,
    LlmCharge,
    llm_expected_micros,
)

PROMPT = [{"role": "user", "content": "Say hello to the tenant."}]

# Settlement happens after the last byte reaches the client; give a late (double) settlement
# this long to show up before counting.
SETTLE_GRACE = 0.3


def words(n: int) -> str:
    """The mock's generated text for `n` output tokens: "word0 word1 … word{n-1}"."""
    return " ".join(f"word{i}" for i in range(n))


class Calls:
    """Per-test view of the shared mock and Sentinel: what happened since the test began."""

    def __init__(self, mock, egress) -> None:
        self.mock = mock
        self.egress = egress
        mock.clear()
        self.log_at = len(egress.logs())
        self.charges_at = len(egress.charges())

    def new_log(self) -> str:
        return self.egress.logs()[self.log_at :]

    def charges(self, n: int) -> list[LlmCharge]:
        """Exactly `n` new settlements (waits for them, then checks no extra one follows)."""
        self.egress.wait_charges(self.charges_at + n)
        time.sleep(SETTLE_GRACE)
        new = self.egress.charges()[self.charges_at :]
        assert len(new) == n, f"{n} settlement(s) expected, got {len(new)}:\n" + "\n".join(
            c.line for c in new
        )
        assert len({c.request_id for c in new}) == n, f"a request settled twice: {new}"
        return new

    def refusals(self, status: int) -> list[str]:
        return [
            line
            for line in self.new_log().splitlines()
            if re.search(r"\brefused\b", line) and f"status={status}" in line
        ]

    def finished_requests(self, n: int) -> list[dict]:
        reqs = self.mock.settled_requests(n)
        assert len(reqs) == n, f"the mock saw {len(reqs)} requests, {n} expected: {reqs}"
        return reqs

    def mock_usage(self) -> dict:
        return self.mock.usage()

    def assert_exact(self, model: str, want_micros: int, tenant: str = "acme") -> LlmCharge:
        """One call: the mock finished it, and Sentinel charged exactly the price of the usage the
        mock reported, which is `want_micros`."""
        usage = self.mock_usage()
        from_mock = llm_expected_micros(model, usage)
        assert from_mock == want_micros, f"mock usage {usage} prices at {from_mock} µ$"
        [charge] = self.charges(1)
        assert charge.tenant == tenant, charge.line
        assert charge.outcome == "ok", charge.line
        assert not charge.estimated, charge.line
        assert charge.micros == from_mock, (
            f"charged {charge.micros} µ$, the mock's usage {usage} costs {from_mock} µ$:\n"
            f"{charge.line}"
        )
        return charge


@pytest.fixture(autouse=True)
def _no_sdk_env(monkeypatch):
    """The SDKs read base URLs, keys and proxies from the environment; these tests pass
    everything explicitly."""
    for var in (
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def calls(mock_llm, llm_egress) -> Calls:
    return Calls(mock_llm, llm_egress)


def oai(egress, tenant: str = "acme", **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 20)
    return openai.OpenAI(base_url=egress.openai_base_url, api_key=egress.key(tenant), **kw)


def claude(egress, tenant: str = "acme", **kw) -> anthropic.Anthropic:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 20)
    if "auth_token" not in kw:
        kw["api_key"] = egress.key(tenant)
    return anthropic.Anthropic(base_url=egress.base_url, **kw)


def assert_only_real_key_reached(req: dict, real_key: str) -> None:
    headers = req["headers"]
    assert any(real_key in v for v in headers.values()), f"no real key upstream: {headers}"
    for name, value in headers.items():
        assert "sk-stn-" not in value, f"the virtual key reached the provider in {name}"
    assert "sk-stn-" not in req["body"], "the virtual key reached the provider in the body"


# --- 1. OpenAI chat, JSON ---


def test_openai_chat_json_parses_and_is_charged_exactly(calls):
    client = oai(calls.egress)
    r = client.chat.completions.create(
        model=LLM_GPT,
        messages=PROMPT,
        max_tokens=600,
        extra_headers={
            "x-mock-input-tokens": "1000",
            "x-mock-cached-tokens": "200",
            "x-mock-output-tokens": "500",
        },
    )
    assert r.choices[0].message.content == words(500)
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (1000, 500)
    assert r.usage.prompt_tokens_details.cached_tokens == 200

    [req] = calls.finished_requests(1)
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {LLM_OPENAI_KEY}"
    assert_only_real_key_reached(req, LLM_OPENAI_KEY)
    # (1000 - 200) × $1 + 200 × $0.50 + 500 × $2 per million tokens = 1,900 µ$.
    calls.assert_exact(LLM_GPT, 1_900)


# --- 2. OpenAI chat, streamed ---


def test_openai_chat_stream_never_shows_the_injected_usage_chunk(calls):
    client = oai(calls.egress)
    stream = client.chat.completions.create(
        model=LLM_GPT,
        messages=PROMPT,
        max_tokens=100,
        stream=True,
        extra_headers={
            "x-mock-input-tokens": "10",
            "x-mock-output-tokens": "20",
            "x-mock-chunks": "4",
        },
    )
    text = []
    n = 0
    for chunk in stream:
        n += 1
        # What every app does; a usage-only chunk (choices == []) would raise IndexError here.
        assert chunk.choices, f"chunk {n} has no choices: {chunk}"
        choice = chunk.choices[0]
        text.append(choice.delta.content or "")
        assert chunk.usage is None, f"the client did not ask for usage: {chunk}"
    assert "".join(text) == words(20)
    assert n >= 4

    [req] = calls.finished_requests(1)
    assert req["json"]["stream"] is True
    assert req["json"]["stream_options"]["include_usage"] is True, (
        "Sentinel must ask the provider for usage to meter the stream"
    )
    # 10 × $1 + 20 × $2 per million = 50 µ$.
    calls.assert_exact(LLM_GPT, 50)


def test_openai_chat_stream_with_include_usage_gets_the_usage_chunk(calls):
    client = oai(calls.egress)
    chunks = list(
        client.chat.completions.create(
            model=LLM_GPT,
            messages=PROMPT,
            max_tokens=100,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-input-tokens": "10", "x-mock-output-tokens": "20"},
        )
    )
    last = chunks[-1]
    assert last.usage is not None, f"the last chunk carries no usage: {last}"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (10, 20)
    assert last.choices == []
    assert all(c.choices for c in chunks[:-1])
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == words(20)
    calls.finished_requests(1)
    calls.assert_exact(LLM_GPT, 50)


# --- 3. Responses and embeddings ---


def test_openai_responses_json_is_charged_exactly(calls):
    client = oai(calls.egress)
    r = client.responses.create(
        model=LLM_GPT,
        input="Hello",
        max_output_tokens=100,
        extra_headers={"x-mock-input-tokens": "40", "x-mock-output-tokens": "30"},
    )
    assert r.output_text == words(30)
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens) == (40, 30)
    [req] = calls.finished_requests(1)
    assert req["path"] == "/v1/responses"
    # 40 × $1 + 30 × $2 per million = 100 µ$.
    calls.assert_exact(LLM_GPT, 100)


def test_openai_responses_stream_is_charged_exactly(calls):
    client = oai(calls.egress)
    events = list(
        client.responses.create(
            model=LLM_GPT,
            input="Hello",
            max_output_tokens=100,
            stream=True,
            extra_headers={"x-mock-input-tokens": "40", "x-mock-output-tokens": "30"},
        )
    )
    types = [e.type for e in events]
    assert types[-1] == "response.completed", types
    delta = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert delta == words(30)
    done = events[-1].response
    assert done.usage is not None
    assert (done.usage.input_tokens, done.usage.output_tokens) == (40, 30)
    calls.finished_requests(1)
    calls.assert_exact(LLM_GPT, 100)


def test_openai_embeddings_default_base64_parse_and_are_charged_exactly(calls):
    client = oai(calls.egress)
    r = client.embeddings.create(
        model=LLM_EMBED,
        input=["one", "two"],
        extra_headers={"x-mock-input-tokens": "1000"},
    )
    assert [d.index for d in r.data] == [0, 1]
    for d in r.data:
        # Decoded by the SDK from base64 into floats.
        assert isinstance(d.embedding, list) and len(d.embedding) == 8
        assert all(isinstance(x, float) and -0.5 <= x < 0.5 for x in d.embedding)
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens == 1000
    [req] = calls.finished_requests(1)
    assert req["json"].get("encoding_format") == "base64", req["json"]
    # 1000 × $0.10 per million = 100 µ$.
    calls.assert_exact(LLM_EMBED, 100)


# --- 4. Anthropic messages ---

CLAUDE_USAGE = {
    "x-mock-input-tokens": "100",
    "x-mock-output-tokens": "50",
    "x-mock-cached-tokens": "20",
    "x-mock-cache-write-tokens": "10",
    "x-mock-double-delta": "1",
}
# 100 × $3 + 20 × $0.30 + 10 × $3.75 + 50 × $15 per million = 1,093.5 → 1,094 µ$ (rounded up).
CLAUDE_MICROS = 1_094


def test_anthropic_messages_create_is_charged_exactly(calls):
    client = claude(calls.egress)
    m = client.messages.create(
        model=LLM_CLAUDE,
        max_tokens=100,
        messages=[{"role": "user", "content": "Say hello."}],
        extra_headers=CLAUDE_USAGE,
    )
    assert m.content[0].type == "text" and m.content[0].text == words(50)
    assert m.stop_reason == "end_turn"
    u = m.usage
    assert (u.input_tokens, u.output_tokens) == (100, 50)
    assert (u.cache_read_input_tokens, u.cache_creation_input_tokens) == (20, 10)
    [req] = calls.finished_requests(1)
    assert req["path"] == "/v1/messages"
    assert req["headers"].get("x-api-key") == LLM_ANTHROPIC_KEY
    assert req["headers"].get("anthropic-version")
    assert_only_real_key_reached(req, LLM_ANTHROPIC_KEY)
    calls.assert_exact(LLM_CLAUDE, CLAUDE_MICROS)


def test_anthropic_stream_with_double_delta_charges_the_final_count_not_the_sum(calls):
    client = claude(calls.egress)
    with client.messages.stream(
        model=LLM_CLAUDE,
        max_tokens=100,
        messages=[{"role": "user", "content": "Say hello."}],
        extra_headers=CLAUDE_USAGE,
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == words(50)
    assert final.content[0].text == words(50)
    # The SDK overwrites with the cumulative count: 50, not 1 + 25 + 50.
    assert final.usage.output_tokens == 50
    assert final.usage.input_tokens == 100
    assert final.usage.cache_read_input_tokens == 20
    assert final.usage.cache_creation_input_tokens == 10
    [req] = calls.finished_requests(1)
    assert req["stream"] is True
    # Summing the deltas (25 + 50) would charge 375 µ$ more.
    calls.assert_exact(LLM_CLAUDE, CLAUDE_MICROS)


def test_anthropic_auth_token_bearer_style_works(calls):
    client = claude(calls.egress, auth_token=calls.egress.key("acme"))
    assert client.api_key is None
    m = client.messages.create(
        model=LLM_CLAUDE,
        max_tokens=100,
        messages=[{"role": "user", "content": "Say hello."}],
        extra_headers={"x-mock-input-tokens": "100", "x-mock-output-tokens": "50"},
    )
    assert m.content[0].text == words(50)
    [req] = calls.finished_requests(1)
    sent = req["headers"]
    assert_only_real_key_reached(req, LLM_ANTHROPIC_KEY)
    assert sent.get("x-api-key") == LLM_ANTHROPIC_KEY or sent.get(
        "authorization"
    ) == f"Bearer {LLM_ANTHROPIC_KEY}", sent
    # 100 × $3 + 50 × $15 per million = 1,050 µ$.
    calls.assert_exact(LLM_CLAUDE, 1_050)


# --- 5. Budget refusals ---


def test_openai_over_budget_is_a_402_the_sdk_does_not_retry(calls):
    # The SDK's default retries are on: a refusal must not be retried.
    client = oai(calls.egress, tenant="poor", max_retries=2)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=LLM_GPT, messages=PROMPT, max_tokens=100)
    e = info.value
    assert e.status_code == 402, e
    assert e.response.headers.get("x-should-retry") == "false"
    assert isinstance(e.body, dict) and e.body.get("type") == "insufficient_quota", e.body
    assert "budget" in e.body.get("message", ""), e.body
    assert not isinstance(e, (openai.RateLimitError, openai.InternalServerError))
    time.sleep(SETTLE_GRACE)
    refused = calls.refusals(402)
    assert len(refused) == 1, f"the SDK sent {len(refused)} requests (retried):\n" + "\n".join(
        refused
    )
    assert 'tenant="poor"' in refused[0] or "tenant=poor" in refused[0], refused[0]
    assert calls.mock.requests() == [], "a refused call reached the provider"
    assert calls.egress.charges()[calls.charges_at :] == [], "a refused call was charged"


def test_anthropic_over_budget_is_a_402_billing_error(calls):
    client = claude(calls.egress, tenant="poor", max_retries=2)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(
            model=LLM_CLAUDE,
            max_tokens=100,
            messages=[{"role": "user", "content": "Say hello."}],
        )
    e = info.value
    assert e.status_code == 402, e
    assert isinstance(e.body, dict), e.body
    assert e.body.get("type") == "error", e.body
    assert e.body["error"]["type"] == "billing_error", e.body
    assert e.type == "billing_error"
    assert e.response.headers.get("x-should-retry") == "false"
    time.sleep(SETTLE_GRACE)
    assert len(calls.refusals(402)) == 1, "the SDK retried a budget refusal"
    assert calls.mock.requests() == [], "a refused call reached the provider"
    assert calls.egress.charges()[calls.charges_at :] == [], "a refused call was charged"


# --- 6. Bad keys ---


def test_bad_keys_are_authentication_errors(calls):
    good = calls.egress.key("acme")
    tampered = good[:-1] + ("A" if good[-1] != "A" else "B")
    for key in ("sk-stn-nonsense", tampered, LLM_OPENAI_KEY):
        client = openai.OpenAI(
            base_url=calls.egress.openai_base_url, api_key=key, max_retries=2, timeout=20
        )
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model=LLM_GPT, messages=PROMPT, max_tokens=10)
        assert info.value.status_code == 401
        assert info.value.code == "invalid_api_key", info.value.body

    for kw in ({"api_key": tampered}, {"auth_token": "sk-stn-nonsense"}):
        client = anthropic.Anthropic(base_url=calls.egress.base_url, max_retries=2, timeout=20, **kw)
        with pytest.raises(anthropic.AuthenticationError) as info:
            client.messages.create(
                model=LLM_CLAUDE,
                max_tokens=10,
                messages=[{"role": "user", "content": "Say hello."}],
            )
        assert info.value.status_code == 401
        assert info.value.type == "authentication_error", info.value.body
    time.sleep(SETTLE_GRACE)
    assert len(calls.refusals(401)) == 5, "one refusal per call, no retries"
    assert calls.mock.requests() == [], "a call with a bad key reached the provider"
    assert calls.egress.charges()[calls.charges_at :] == []


# --- 7. Rate limits ---


def test_provider_429_is_a_rate_limit_error_with_its_retry_after(calls):
    client = oai(calls.egress, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model=LLM_GPT,
            messages=PROMPT,
            max_tokens=100,
            extra_headers={"x-mock-fail": "429", "x-mock-retry-after": "7"},
        )
    assert info.value.status_code == 429
    assert info.value.response.headers.get("retry-after") == "7"

    aclient = claude(calls.egress, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as ainfo:
        aclient.messages.create(
            model=LLM_CLAUDE,
            max_tokens=100,
            messages=[{"role": "user", "content": "Say hello."}],
            extra_headers={"x-mock-fail": "429", "x-mock-retry-after": "9"},
        )
    assert ainfo.value.response.headers.get("retry-after") == "9"
    reqs = calls.finished_requests(2)
    assert [r["status"] for r in reqs] == [429, 429], "one request each, no retries"
    # Each call reached the provider once and is settled once: an error status from the
    # provider is charged at least the input bound (docs/llm-egress.md, settlement).
    charged = calls.charges(2)
    for c in charged:
        assert c.tenant == "acme" and c.outcome == "upstream_error", c.line
        assert c.estimated and c.micros > 0, c.line


def test_sentinel_rate_limit_is_a_rate_limit_error_with_retry_after(calls):
    # Tenant "slow" may make one request a minute (used by this test only).
    client = oai(calls.egress, tenant="slow", max_retries=0)
    first = client.chat.completions.create(model=LLM_GPT, messages=PROMPT, max_tokens=10)
    assert first.choices[0].message.content
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=LLM_GPT, messages=PROMPT, max_tokens=10)
    retry = int(info.value.response.headers["retry-after"])
    assert 1 <= retry <= 60, retry
    assert info.value.code == "rate_limit_exceeded", info.value.body
    calls.finished_requests(1)
    calls.assert_exact(LLM_GPT, 50, tenant="slow")


# --- 8. A stream cut mid-way ---


def test_openai_stream_cut_midway_raises_and_settles_once_estimated(calls):
    client = oai(calls.egress, max_retries=0)
    got = []
    with pytest.raises(Exception) as info:
        stream = client.chat.completions.create(
            model=LLM_GPT,
            messages=PROMPT,
            max_tokens=100,
            stream=True,
            extra_headers={"x-mock-fail": "cut", "x-mock-chunks": "6"},
        )
        for chunk in stream:
            got.append(chunk)
    assert not isinstance(info.value, AssertionError), info.value
    assert got, "the stream was cut before any chunk reached the SDK"
    [req] = calls.finished_requests(1)
    assert req["outcome"] == "aborted", req
    [charge] = calls.charges(1)
    assert charge.outcome == "upstream_cut", charge.line
    assert charge.estimated, charge.line
    assert charge.micros > 0, charge.line
    # Input bound plus the output streamed so far: within what was reserved.
    assert charge.reserved_micros is not None and charge.micros <= charge.reserved_micros, (
        charge.line
    )


def test_anthropic_stream_cut_midway_raises_and_settles_once_estimated(calls):
    client = claude(calls.egress, max_retries=0)
    with pytest.raises(Exception) as info:
        with client.messages.stream(
            model=LLM_CLAUDE,
            max_tokens=100,
            messages=[{"role": "user", "content": "Say hello."}],
            extra_headers={"x-mock-fail": "cut", "x-mock-chunks": "6"},
        ) as stream:
            stream.get_final_message()
    assert not isinstance(info.value, AssertionError), info.value
    [req] = calls.finished_requests(1)
    assert req["outcome"] == "aborted", req
    [charge] = calls.charges(1)
    assert charge.outcome == "upstream_cut", charge.line
    assert charge.estimated, charge.line
    assert charge.micros > 0, charge.line
    # Input bound plus the output streamed so far: within what was reserved.
    assert charge.reserved_micros is not None and charge.micros <= charge.reserved_micros, (
        charge.line
    )
