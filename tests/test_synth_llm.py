"""The synthesizer's LLM client against real local OpenAI-compatible servers (real HTTP, injected faults)."""
import asyncio
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from scripted_openai import Faults, LocalServer, ScriptedOpenAI

from synth.llm import Accounting, Endpoint, LLMClient, LLMError


def _echo(request: dict) -> str:
    return "echo: " + request["messages"][-1]["content"]


def _run(coroutine):
    return asyncio.run(coroutine)


def test_thirty_percent_mixed_faults_all_calls_complete_and_retries_are_counted():
    faults = Faults(error_500=0.10, error_429=0.08, hang=0.04, garbage=0.05, empty_choices=0.03,
                    retry_after=0.05, hang_seconds=5.0, seed=3, exact=True)   # 30% of calls fail
    with ScriptedOpenAI(_echo, faults=faults) as server:
        async def main():
            client = LLMClient([Endpoint(server.base_url, "m", max_concurrency=16)], timeout=1.0,
                               max_retries=10, backoff=0.01, backoff_max=0.1, seed=0)
            accounting = Accounting()
            questions = [f"question {i}" for i in range(60)]
            results = await asyncio.gather(*(
                client.chat([{"role": "user", "content": q}], max_tokens=16, accounting=accounting)
                for q in questions))
            await client.aclose()
            return questions, results, accounting

        questions, results, accounting = _run(main())
    # Every call got its own answer (no cross-wiring between concurrent requests).
    assert [r.text for r in results] == [f"echo: {q}" for q in questions]
    faulty = sum(n for kind, n in server.stats.items() if kind != "ok")
    assert 0.25 <= faulty / sum(server.stats.values()) <= 0.35, server.stats   # 60 ok + ~26 faults
    assert len([k for k in server.stats if k != "ok" and server.stats[k]]) >= 4, server.stats
    assert server.stats["ok"] == 60
    assert accounting.calls == 60 and accounting.failures == 0
    # Each injected fault cost exactly one retried attempt.
    assert accounting.retries == faulty == sum(r.retries for r in results)
    assert accounting.prompt_tokens == sum(len(q.split()) for q in questions)
    assert accounting.completion_tokens == sum(len(r.text.split()) for r in results)


def test_failover_to_the_next_endpoint_and_cost_per_endpoint_prices():
    with ScriptedOpenAI(_echo, faults=Faults(error_500=1.0)) as broken, \
            ScriptedOpenAI(_echo, model="healthy") as healthy:
        async def main():
            # Equal free slots: the first call starts on the first endpoint in the list, the broken one.
            client = LLMClient([Endpoint(broken.base_url, "m1"),
                                Endpoint(healthy.base_url, "healthy", price_prompt=2e6, price_completion=1e6)],
                               timeout=5.0, max_retries=3, backoff=0.01)
            accounting = Accounting()
            result = await client.chat([{"role": "user", "content": "a b c"}], accounting=accounting)
            await client.aclose()
            return result, accounting

        result, accounting = _run(main())
    assert broken.stats["error_500"] == 1 and healthy.stats["ok"] == 1
    assert result.text == "echo: a b c" and result.model == "healthy" and result.retries == 1
    assert accounting.retries == 1
    assert accounting.cost == pytest.approx(2 * 3 + 1 * 4)  # 3 prompt words at 2/token, 4 completion at 1


def test_a_dead_endpoint_fails_over_and_retry_after_is_honoured():
    with ScriptedOpenAI(_echo, faults=Faults(error_429=1.0, retry_after=0.4)) as limited, \
            ScriptedOpenAI(_echo) as healthy:
        dead = LocalServer(FastAPI())  # bound then closed: connections are refused
        dead_url = dead.url
        dead._socket.close()

        async def main():
            client = LLMClient([Endpoint(limited.base_url, "a", max_concurrency=50),
                                Endpoint(dead_url + "/v1", "b", max_concurrency=40),
                                Endpoint(healthy.base_url, "c", max_concurrency=30)],
                               timeout=5.0, max_retries=4, backoff=0.001)
            start = time.monotonic()
            result = await client.chat([{"role": "user", "content": "hi"}])
            await client.aclose()
            return result, time.monotonic() - start

        result, elapsed = _run(main())
    assert result.text == "echo: hi" and result.retries == 2
    assert elapsed >= 0.4  # waited the server's Retry-After, not the 1 ms backoff


def test_gives_up_with_a_reason_after_max_retries():
    with ScriptedOpenAI(_echo, faults=Faults(error_500=1.0)) as server:
        async def main():
            client = LLMClient([Endpoint(server.base_url, "m")], timeout=5.0, max_retries=3, backoff=0.001)
            accounting = Accounting()
            with pytest.raises(LLMError) as caught:
                await client.chat([{"role": "user", "content": "x"}], accounting=accounting)
            await client.aclose()
            return caught.value, accounting

        error, accounting = _run(main())
    assert server.stats["error_500"] == 4 and error.attempts == 4
    assert "HTTP 500" in error.reason
    assert accounting.failures == 1 and accounting.retries == 3 and accounting.calls == 0


def test_api_key_is_sent_but_never_shown(monkeypatch):
    secret = "sk-test-very-secret-123"
    monkeypatch.setenv("ORESEARCHER_TEST_KEY", secret)
    app = FastAPI()
    seen = []

    @app.post("/v1/chat/completions")
    async def refuse(request: Request):
        seen.append(request.headers.get("authorization"))
        # A badly behaved server that echoes the credential back in its error text.
        return JSONResponse({"error": f"invalid key {request.headers.get('authorization')}"}, status_code=401)

    with LocalServer(app) as server:
        async def main():
            client = LLMClient([Endpoint(server.url + "/v1", "m", api_key_env="ORESEARCHER_TEST_KEY")],
                               timeout=5.0, max_retries=3, backoff=0.001)
            with pytest.raises(LLMError) as caught:
                await client.chat([{"role": "user", "content": "x"}])
            text = repr(client) + str(caught.value) + repr(client.endpoints)
            await client.aclose()
            return text

        shown = _run(main())
    assert seen == [f"Bearer {secret}"]  # 401 is not retried on the same endpoint
    assert secret not in shown and "HTTP 401" in shown and "<redacted>" in shown


def test_per_endpoint_concurrency_limit():
    active, peak = 0, 0

    async def slow(request):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.1)
        active -= 1
        return "ok"

    with ScriptedOpenAI(slow) as server:
        async def main():
            client = LLMClient([Endpoint(server.base_url, "m", max_concurrency=3)], timeout=5.0)
            await asyncio.gather(*(client.chat([{"role": "user", "content": str(i)}]) for i in range(12)))
            await client.aclose()

        _run(main())
    assert peak == 3


def test_request_body_is_byte_identical_to_json_dumps():
    """The request body reuses the JSON of message contents it already encoded; it must stay json.dumps's bytes."""
    import json
    client = LLMClient([Endpoint("http://127.0.0.1:9/v1", "m")])
    turns = [{"role": "system", "content": "Be brief. «ünïcode» 中文 \"quoted\" \\ back\nslash"},
             {"role": "user", "content": "<observation>\n# Search\n\t1. [A](https://a.example/x?q=1&b=2)</observation>"},
             {"content": "key order differs", "role": "assistant"},
             {"role": "user", "content": "extra field", "name": "bob"}]
    for stop, extra in ((None, None), (["</web_search>"], {"continue_final_message": True, "seed": 7})):
        payload = {"model": "m", "messages": turns, "temperature": 0.7, "max_tokens": 64}
        if stop:
            payload["stop"] = stop
        payload.update(extra or {})
        for _ in range(2):   # the second time the contents come from the client's memo
            assert client._request_body(payload) == json.dumps(payload, ensure_ascii=False).encode("utf-8")
