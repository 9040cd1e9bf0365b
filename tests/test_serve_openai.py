"""`python -m oresearcher.serve` as a real server on loopback: the OpenAI chat and completion APIs (stop, n,
max_tokens, temperature, top_p), server-sent-event streams, content parts, bad requests answered 400 with OpenAI's
error body naming the parameter, and an unknown model 404. Requests share the engine's SLOTS slots: a short one
overtakes a long one, more requests than slots all complete, greedy answers are the Sampler's, and a seeded one is
the same alone as among others."""
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
NAMES = ("policy", "policy-alias")
SLOTS = 4       # few, so that a handful of concurrent requests already queue for a slot
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.Popen([sys.executable, "-m", "oresearcher.serve", "--port", str(port), "--name", NAMES[0],
                             "--name", NAMES[1], "--max-batch", str(SLOTS)],   # the old flag: an alias of --slots
                            cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("server not healthy in 240 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_chat_and_completions(server):
    r = httpx.post(f"{server}/v1/chat/completions", timeout=300, json={
        "model": "policy", "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0, "max_tokens": 16})
    assert r.status_code == 200, r.text
    body = r.json()
    answer = body["choices"][0]["message"]["content"]
    print("chat:", repr(answer), body["usage"])
    assert "Paris" in answer and body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] <= 16 and body["usage"]["prompt_tokens"] > 5

    r = httpx.post(f"{server}/v1/completions", timeout=300, json={
        "prompt": "The three primary colours are", "max_tokens": 12, "n": 3, "temperature": 1.0, "top_p": 0.9,
        "stop": ["\n", "."], "seed": 1})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    print("completions:", [c["text"] for c in choices])
    assert len(choices) == 3
    for c in choices:
        assert "\n" not in c["text"] and "." not in c["text"]
        assert c["finish_reason"] in ("stop", "length")

    # a stop string the greedy answer reaches is cut from the text, with finish_reason "stop"
    r = httpx.post(f"{server}/v1/chat/completions", timeout=300, json={
        "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0,
        "max_tokens": 16, "stop": "Paris"})
    c = r.json()["choices"][0]
    assert c["finish_reason"] == "stop" and "Paris" not in c["message"]["content"]

    # continue_final_message (vLLM's extension): the model continues a prefilled assistant turn, and the
    # response holds only the continuation
    prefilled = [{"role": "user", "content": "What is the capital of France?"},
                 {"role": "assistant", "content": "The capital of France is"}]
    r = httpx.post(f"{server}/v1/chat/completions", timeout=300, json={
        "messages": prefilled, "temperature": 0, "max_tokens": 4, "continue_final_message": True,
        "add_generation_prompt": False})
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["message"]["content"]
    print("continued:", repr(content))
    assert "Paris" in content and "capital" not in content
    r = httpx.post(f"{server}/v1/chat/completions", timeout=30, json={"messages": prefilled,
                                                                      "continue_final_message": True})
    assert r.status_code == 400 and "add_generation_prompt" in r.text


@pytest.mark.slow
def test_concurrent_requests_and_errors(server):
    def ask(i):
        return httpx.post(f"{server}/v1/completions", timeout=300, json={
            "prompt": f"Count: {i}, {i + 1},", "max_tokens": 6, "temperature": 0})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(8)))
    assert all(r.status_code == 200 for r in results)
    assert all(r.json()["choices"][0]["text"] for r in results)
    bad = httpx.post(f"{server}/v1/completions", timeout=30, json={"prompt": "x", "n": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "n"
    bad = httpx.post(f"{server}/v1/chat/completions", timeout=30, json={"messages": "not a list"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"


def _events(response) -> list:
    """The data of each server-sent event (JSON decoded, "[DONE]" kept as the string)."""
    assert response.headers["content-type"].startswith("text/event-stream")
    out = []
    for line in response.iter_lines():
        if line:
            assert line.startswith("data: "), line
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.mark.slow
def test_streams_match_the_plain_answers(server):
    plain = httpx.post(f"{server}/v1/chat/completions", timeout=300, json={
        "model": "policy", "messages": QUESTION, "temperature": 0, "max_tokens": 8}).json()
    with httpx.stream("POST", f"{server}/v1/chat/completions", timeout=300, json={
            "model": "policy-alias", "messages": QUESTION, "temperature": 0, "max_tokens": 8, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("content", "") for d in deltas) == plain["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == \
        plain["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]

    body = {"prompt": "The three primary colours are", "max_tokens": 6, "temperature": 0, "n": 2}
    plain = httpx.post(f"{server}/v1/completions", timeout=300, json=body).json()
    with httpx.stream("POST", f"{server}/v1/completions", timeout=300, json={**body, "stream": True}) as r:
        events = _events(r)
    assert events[-1] == "[DONE]"
    for i in range(2):
        mine = [c["choices"][0] for c in events[:-1] if c["choices"][0]["index"] == i]
        assert "".join(c["text"] for c in mine) == plain["choices"][i]["text"]
        assert mine[-1]["finish_reason"] == plain["choices"][i]["finish_reason"]
        assert all(c["object"] == "text_completion" for c in events[:-1])


@pytest.mark.slow
def test_content_as_a_list_of_text_parts(server):
    as_string = httpx.post(f"{server}/v1/chat/completions", timeout=300, json={
        "messages": QUESTION, "temperature": 0, "max_tokens": 8}).json()
    parts = [{"role": "system", "content": [{"type": "text", "text": "You are a helpful AI assistant."}]},
             {"role": "user", "content": [{"type": "text", "text": "What is the capital "},
                                          {"type": "text", "text": "of France?"}]}]
    r = httpx.post(f"{server}/v1/chat/completions", timeout=300, json={
        "messages": parts, "temperature": 0, "max_tokens": 8})
    assert r.status_code == 200, r.text
    with_system = httpx.post(f"{server}/v1/chat/completions", timeout=300, json={
        "messages": [{"role": "developer", "content": "You are a helpful AI assistant."}, *QUESTION],
        "temperature": 0, "max_tokens": 8}).json()
    assert r.json()["choices"][0]["message"]["content"] == with_system["choices"][0]["message"]["content"]
    assert as_string["choices"][0]["message"]["content"]


CHAT_ERRORS = [   # (body change, the parameter OpenAI's error names)
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),
    ({"seed": 2 ** 70}, "seed"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"messages": []}, "messages"),
    ({"messages": [{"content": "no role"}]}, "messages[0].role"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]},
     "messages[0].content"),
    ({"stream_options": {"include_usage": True}}, ""),
]


@pytest.mark.slow
@pytest.mark.parametrize("change,param", CHAT_ERRORS)
def test_bad_chat_requests_get_openai_400s(server, change, param):
    r = httpx.post(f"{server}/v1/chat/completions", timeout=30, json={"messages": QUESTION, **change})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    print(change, "->", error["message"])
    assert error["type"] == "invalid_request_error" and error["message"]
    assert (error["param"] or "").startswith(param)


@pytest.mark.slow
def test_completion_validation_unknown_model_and_models_list(server):
    for change, param in (({"max_tokens": 0}, "max_tokens"), ({"seed": -2 ** 64}, "seed"), ({"prompt": []}, "prompt")):
        r = httpx.post(f"{server}/v1/completions", timeout=30, json={"prompt": "x", **change})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    for path, body in (("chat/completions", {"messages": QUESTION}), ("completions", {"prompt": "x"})):
        r = httpx.post(f"{server}/v1/{path}", timeout=30, json={**body, "model": "gpt-4o"})
        assert r.status_code == 404
        error = r.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model" and "gpt-4o" in error["message"]
    assert [m["id"] for m in httpx.get(f"{server}/v1/models").json()["data"]] == list(NAMES)
    # a valid seed beyond 32 bits is accepted (folded onto the sampler's seed), and reproducible
    body = {"prompt": "Colours:", "max_tokens": 4, "seed": 2 ** 62 + 7, "temperature": 1.0}
    a, b = (httpx.post(f"{server}/v1/completions", timeout=300, json=body) for _ in range(2))
    assert a.status_code == b.status_code == 200 and a.json()["choices"] == b.json()["choices"]
    assert httpx.get(f"{server}/healthz").status_code == 200


def _complete(server, **body):
    r = httpx.post(f"{server}/v1/completions", timeout=300, json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
def test_a_short_request_sent_during_a_long_one_finishes_first(server):
    long = {"prompt": "Count to a thousand: 1, 2, 3, 4, 5,", "temperature": 0, "max_tokens": 200}
    short = {"prompt": "The capital of France is", "temperature": 0, "max_tokens": 4}
    _complete(server, **{**long, "max_tokens": 8})          # compile what the two take
    _complete(server, **short)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(_complete, server, **long)
        time.sleep(0.5)                                     # the long one is decoding
        assert not pending.done()
        answer = _complete(server, **short)
        short_done = time.monotonic()
        assert not pending.done(), "the short request waited for the long one"
        body = pending.result()
    print(f"short answered {short_done - started:.1f} s after the long one started, which took "
          f"{time.monotonic() - started:.1f} s")
    assert answer["choices"][0]["text"] and answer["usage"]["completion_tokens"] <= 4
    assert body["usage"]["completion_tokens"] == 200 and body["choices"][0]["finish_reason"] == "length"


@pytest.mark.slow
def test_greedy_answers_are_the_samplers_and_a_seeded_one_ignores_its_company(server):
    from oresearcher import serve
    from oresearcher.sampler import Sampler, SamplingParams

    model, tokenizer, _ = serve.load(None)
    prompt = "The three primary colours are"
    [want] = Sampler(model, tokenizer).generate([tokenizer.encode(prompt)],
                                                SamplingParams(temperature=0.0, max_new_tokens=24, stop=()))
    got = _complete(server, prompt=prompt, temperature=0, max_tokens=24)
    tokens = want.tokens[:-1] if want.finish_reason == "eos" else want.tokens
    assert got["choices"][0]["text"] == tokenizer.decode(tokens)
    assert got["usage"]["completion_tokens"] == len(want.tokens)

    # a seeded request at temperature 1, alone and then among others with other parameters, stops and lengths
    seeded = {"prompt": "Once upon a time", "temperature": 1.0, "max_tokens": 24, "seed": 1234}
    alone = _complete(server, **seeded)["choices"][0]["text"]
    company = [seeded, {"prompt": "Once upon a time", "temperature": 1.0, "max_tokens": 24, "seed": 99},
               {"prompt": "List three fruits:", "temperature": 0.8, "top_p": 0.8, "max_tokens": 12, "n": 2},
               {"prompt": "The weather today", "temperature": 1.0, "top_k": 20, "max_tokens": 30, "stop": [" the"]},
               {"prompt": prompt, "temperature": 0, "max_tokens": 5}, seeded,
               {"prompt": "Dear Sir,", "temperature": 1.0, "max_tokens": 40, "stop": ["\n", "."], "seed": 7}]
    with concurrent.futures.ThreadPoolExecutor(len(company)) as pool:
        answers = list(pool.map(lambda body: _complete(server, **body), company))
    print("alone:", repr(alone), "among others:", [[c["text"] for c in a["choices"]] for a in answers])
    assert answers[0]["choices"][0]["text"] == alone and answers[5]["choices"][0]["text"] == alone
    assert answers[1]["choices"][0]["text"] != alone


@pytest.mark.slow
def test_more_requests_than_slots_all_complete_as_they_would_alone(server):
    bodies = [{"prompt": f"Count: {i}, {i + 1},", "temperature": 0, "max_tokens": 3 + i} for i in range(3 * SLOTS)]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda body: _complete(server, **body), bodies))
    for body, answer in zip(bodies, together):
        assert answer["choices"][0] == _complete(server, **body)["choices"][0]
        assert answer["usage"]["completion_tokens"] <= body["max_tokens"]
