"""`python -m oresearcher.serve` as a real server on loopback: the OpenAI chat and completion APIs (stop, n,
max_tokens, temperature, top_p), concurrent requests batched, and bad requests answered with a 4xx."""
import concurrent.futures
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.Popen([sys.executable, "-m", "oresearcher.serve", "--port", str(port)], cwd=REPO, env=env,
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
        "model": "x", "messages": [{"role": "user", "content": "What is the capital of France?"}],
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
    assert bad.status_code == 400 and "n=0" in bad.text
    bad = httpx.post(f"{server}/v1/chat/completions", timeout=30, json={"messages": "not a list"})
    assert bad.status_code == 422
