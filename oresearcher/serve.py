"""OpenAI-compatible serving of the policy: /v1/chat/completions and /v1/completions (FastAPI + uvicorn).

    python -m oresearcher.serve                                  # the embedded SmolLM2-135M-Instruct
    python -m oresearcher.serve --checkpoint=DIR --port 8000     # an HF-layout checkpoint (save_hf export)

Supported request fields: model, messages / prompt, max_tokens, temperature, top_p, top_k (extension), n, stop
(a string or a list), seed, stream (+ stream_options.include_usage), and for chat vLLM's continue_final_message +
add_generation_prompt=false (the model continues a last assistant message: a prefilled answer prefix). Finish
reasons follow OpenAI: "stop" for a stop string or EOS (the stop string is cut from the returned text), "length"
at max_tokens. Request validation, error bodies, content parts and the event stream are `oresearcher.openai_api`'s;
this module turns a valid request into token ids, generates, and hands back the texts.

The synthesizer uses this as its `local` teacher (its OpenAI client pointed at http://HOST:PORT/v1), and runs many
researchers at once. Requests share the rollout engine's slots (oresearcher.engine: continuous batching, `--slots`,
default 32): a worker thread keeps one engine run going and feeds it each request (each of its `n` choices) as an
episode of one turn. A request takes a free slot at the next engine step, decodes beside the others with its own
temperature / top-p / top-k / stop strings / seed, and leaves its slot the moment it ends: a short request never
waits for a long one, and one with a given seed gets the same tokens whatever else is being served (up to float
rounding). Requests beyond the slots queue until one frees.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import queue
import threading
import uuid

from fastapi import FastAPI

from oresearcher import openai_api
from oresearcher.engine import Engine
from oresearcher.openai_api import APIError, ChatRequest, CompletionRequest
from oresearcher.sampler import SamplingParams


@dataclasses.dataclass
class _Job:
    prompt: list[int]
    max_new: int
    params: SamplingParams
    future: concurrent.futures.Future


class _Requests:
    """The engine run's feed and agent: submitted jobs become episodes of one turn of max_new tokens whose
    completion resolves the job's future. Only `submit` and `close` are called from other threads."""

    def __init__(self):
        self._incoming: queue.Queue[_Job | None] = queue.Queue()     # None: close
        self._live: dict[int, _Job] = {}     # episode of the current run -> its job
        self._fed = 0
        self._closed = False

    def submit(self, job: _Job) -> None:
        self._incoming.put(job)

    def close(self) -> None:
        self._incoming.put(None)

    def feed(self, idle: bool) -> list | None:
        if self._closed:
            return None
        jobs = []
        try:
            jobs.append(self._incoming.get(block=idle))     # idle: nothing to decode, so wait for a request
            while True:
                jobs.append(self._incoming.get_nowait())
        except queue.Empty:
            pass
        if None in jobs:
            self._closed = True
            jobs.remove(None)
        for job in jobs:                                 # the run numbers fed episodes in order, from 0
            self._live[self._fed] = job
            self._fed += 1
        return [(job.prompt, job.params) for job in jobs]

    def fail(self, error: Exception) -> None:
        """The run died: its requests get the error, and the next run numbers its episodes from 0 again."""
        for job in self._live.values():
            job.future.set_exception(error)
        self._live.clear()
        self._fed = 0

    def budget(self, episode: int) -> int:
        return self._live[episode].max_new

    def on_turn(self, episode: int, completion):
        self._live.pop(episode).future.set_result(completion)
        return None                                      # one turn: the episode ends, its slot is free

    def on_result(self, episode: int, result):
        raise AssertionError("a served request makes no calls")


class Server:
    """The model on the rollout engine, its tokenizer, and the worker thread that keeps one engine run going.
    `submit` is thread-safe."""

    def __init__(self, model, tokenizer, *, name: str, slots: int = 32, max_context: int | None = None):
        self.engine = Engine(model, tokenizer, slots=slots)
        self.tokenizer = tokenizer
        self.name = name
        self.max_context = max_context or model.cfg.max_position_embeddings
        self._requests = _Requests()
        self._worker = threading.Thread(target=self._serve, daemon=True, name="oresearcher-serve")
        self._worker.start()

    def submit(self, prompt: list[int], max_new: int, params: SamplingParams) -> concurrent.futures.Future:
        if len(prompt) + 1 > self.max_context:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds the model context of {self.max_context}")
        job = _Job(prompt, max(1, min(max_new, self.max_context - len(prompt))), params, concurrent.futures.Future())
        self._requests.submit(job)
        return job.future

    def close(self) -> None:
        """End the run once the requests already submitted are answered, and the worker with it."""
        self._requests.close()
        self._worker.join()

    def _serve(self):
        while True:
            try:
                self.engine.run([], self._requests, SamplingParams(), self.max_context, feed=self._requests.feed)
                return
            except Exception as e:  # the requests in the run fail, the server stays up
                self._requests.fail(e)

    def finish(self, completion, stop: tuple[str, ...]) -> tuple[str, str, int]:
        """(text with any stop string cut, OpenAI finish reason, completion tokens)."""
        tokens = completion.tokens
        if completion.finish_reason == "eos":
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens)
        if completion.finish_reason == "stop":
            cut = min((text.find(s) for s in stop if s and s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
        reason = "length" if completion.finish_reason == "length" else "stop"
        return text, reason, len(completion.tokens)


def _params(req, stop) -> SamplingParams:
    """Sampling parameters of a validated request; the 64-bit OpenAI seed folded onto the sampler's 32-bit one."""
    seed = req.seed if req.seed is not None else int.from_bytes(uuid.uuid4().bytes[:4], "little")
    return SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, stop=stop,
                          seed=seed % 2 ** 32)


def chat_prompt(tokenizer, req: ChatRequest) -> str:
    """The chat rendered by the model's template. With continue_final_message (and add_generation_prompt off)
    the rendering ends right after the last message's content, which must be an assistant turn: the model
    continues that prefix, and the response holds only the continuation (vLLM's and HF's semantics)."""
    messages = req.chat_messages()
    if not req.continue_final_message:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=req.add_generation_prompt)
    if req.add_generation_prompt:
        raise APIError(400, "continue_final_message needs add_generation_prompt=false", "add_generation_prompt")
    last = messages[-1]
    prefix = last["content"]
    if last["role"] != "assistant" or not prefix.strip():
        raise APIError(400, "continue_final_message: the last message must be an assistant turn with text",
                       "messages")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    prefix = prefix.rstrip()
    cut = text.rfind(prefix)
    if cut < 0:
        raise APIError(400, "continue_final_message: the chat template does not keep the last message's text",
                       "messages")
    return text[:cut + len(prefix)]


def build_app(server: Server, names: list[str] | None = None) -> FastAPI:
    """The OpenAI routes over `server`; `names`: the model names requests may ask for (default: server.name)."""
    app = FastAPI(title="oresearcher policy server")
    openai_api.install_error_handlers(app)
    served = list(names or [server.name])

    def run(prompts: list[list[int]], max_new: int, params: SamplingParams, n: int) -> list:
        try:
            futures = [server.submit(p, max_new, dataclasses.replace(params, seed=(params.seed + i) % 2 ** 32))
                       for p in prompts for i in range(n)]
        except ValueError as e:
            raise APIError(400, str(e), "messages") from None
        return [f.result() for f in futures]

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "model": server.name}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "oresearcher"}
                                           for name in served]}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest):
        openai_api.check_model(req.model, served)
        stop = req.stops()
        prompt = server.tokenizer.encode(chat_prompt(server.tokenizer, req))
        max_new = req.max_completion_tokens or req.max_tokens or 1024
        outs = run([prompt], max_new, _params(req, stop), req.n)
        return openai_api.chat_response(req, server.name, len(prompt), [server.finish(o, stop) for o in outs])

    @app.post("/v1/completions")
    def complete(req: CompletionRequest):
        openai_api.check_model(req.model, served)
        stop = req.stops()
        texts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        prompts = [server.tokenizer.encode(t) for t in texts]
        if any(not p for p in prompts):
            raise APIError(400, "an empty prompt: give at least one token of text", "prompt")
        outs = run(prompts, req.max_tokens, _params(req, stop), req.n)
        return openai_api.completion_response(req, server.name, sum(len(p) for p in prompts),
                                              [server.finish(o, stop) for o in outs])

    return app


def load(checkpoint: str | None):
    """(model, tokenizer, name): the embedded SmolLM2 GGUF, or an HF-layout directory (safetensors + tokenizer)."""
    from oresearcher.model import Tokenizer, load_gguf, load_hf

    if not checkpoint:
        model, tokenizer = load_gguf()
        return model, tokenizer, "smollm2-135m-instruct"
    try:
        return load_hf(checkpoint), Tokenizer.from_dir(checkpoint), checkpoint.rstrip("/").split("/")[-1]
    except FileNotFoundError as e:
        raise SystemExit(f"--checkpoint={checkpoint}: {e}; point it at an HF-layout directory (config.json, "
                         f"*.safetensors, tokenizer.json), e.g. one written by save_hf") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="HF-layout directory; default: embedded SmolLM2")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--slots", "--max-batch", dest="slots", type=int, default=32,
                        help="requests decoded at once (the engine's slots); more wait for a free one")
    parser.add_argument("--name", action="append", default=None,
                        help="model name reported to clients and accepted in requests (repeat for aliases; "
                             "others are answered 404 like OpenAI's unknown models)")
    args = parser.parse_args(argv)

    import uvicorn

    model, tokenizer, name = load(args.checkpoint)
    names = args.name or [name]
    server = Server(model, tokenizer, name=names[0], slots=args.slots)
    print(f"serving {', '.join(names)} on http://{args.host}:{args.port}/v1 ({args.slots} slots)", flush=True)
    uvicorn.run(build_app(server, names), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    from oresearcher import hugepages
    hugepages.enable()  # re-executes once with huge pages for XLA's buffers (see oresearcher/hugepages.py)
    main()
