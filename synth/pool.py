"""Synthesis across worker processes (`workflow.processes` > 1): the same funnel, one event loop per core.

One event loop drives the HTTP calls, tools, parsing and judging of every question in flight. With a slow LLM
that is fine up to a few dozen questions; beyond that the client's own CPU (~20 ms per trajectory) becomes the
limit of one core. `ProcessPool` runs a `Synthesizer` in each of `processes` worker processes, each with its own
loop, LLM clients and tools (the tool cache is one SQLite file on disk, shared), and hands each question to the
worker with the fewest in flight. It has the Synthesizer's interface, so `run_job` and the service use either.

    synth = ProcessPool(cfg)            # cfg.workflow.processes workers, started on first use
    await synth.start()                 # optional: wait until every worker is ready (start-up is ~1 s each)
    outcome = await synth.synthesize(question, qid)
    await synth.aclose()

The parent keeps the job store: a worker only returns outcomes, one JSON line per question on its stdout, and
the parent commits them, so durability and resumption are those of one process. A worker that dies (killed,
out of memory) is replaced and its questions are asked again of the new one (at most twice per question).
Protocol on the worker's pipes: stdin gets the config as one JSON line, then {"n", "question", "qid"} lines;
stdout answers {"ready": true} once built, then {"n", "record", "rejections"} per question, in any order.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import sys

if __name__ == "__main__":
    sys.modules.setdefault("jax", None)   # as synth/__main__.py: the synthesizer never needs JAX

from synth.config import config_hash
from synth.funnel import Outcome, Synthesizer

log = logging.getLogger(__name__)
REPO = pathlib.Path(__file__).resolve().parents[1]
LINE_LIMIT = 1 << 28          # one record per line; a 64k-token trajectory is well under a megabyte
RETRIES = 2                   # times a question is asked again after its worker died


class WorkerDied(RuntimeError):
    pass


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.waiting: dict[int, asyncio.Future] = {}
        self.ready = asyncio.get_running_loop().create_future()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while line := await self.process.stdout.readline():
                message = json.loads(line)
                if message.get("ready"):
                    self.ready.set_result(True)
                    continue
                future = self.waiting.pop(message["n"], None)
                if future is not None and not future.done():
                    future.set_result(Outcome(message["record"], message["rejections"]))
        finally:   # stdout closed: the worker exited (or was killed); nothing more will come
            code = await self.process.wait()
            error = WorkerDied(f"synth worker process {self.process.pid} exited with status {code}")
            if not self.ready.done():
                self.ready.set_exception(error)
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(error)
            self.waiting.clear()

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and not self.reader.done()


class ProcessPool:
    """`processes` Synthesizer workers behind the Synthesizer interface (synthesize, aclose)."""

    def __init__(self, cfg, processes: int | None = None):
        self.cfg = cfg
        self.processes = int(processes or cfg.workflow.get("processes", 1))
        if self.processes < 1:
            raise ValueError(f"workflow.processes={self.processes}: use 1 (in process) or more worker processes")
        self.workers: list[_Worker] = []
        self._count = 0
        self._starting: asyncio.Lock | None = None
        # Built here too: a bad config fails now with the Synthesizer's own error (naming the key), not later in
        # a worker; its tools serve callers that use them directly (the service's tool endpoints).
        self.local = Synthesizer.from_config(cfg)
        self.tools, self.config_hash = self.local.tools, config_hash(cfg)

    async def _spawn(self) -> _Worker:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "synth.pool", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=env, limit=LINE_LIMIT)
        config = self.cfg.to_dict()
        config["workflow"]["processes"] = 1
        process.stdin.write(json.dumps(config, default=str).encode() + b"\n")
        worker = _Worker(process)
        return worker

    async def start(self) -> ProcessPool:
        """Start the missing workers (a dead one is replaced) and wait until each is ready."""
        self._starting = self._starting or asyncio.Lock()
        async with self._starting:
            self.workers = [w for w in self.workers if w.alive]
            while len(self.workers) < self.processes:
                self.workers.append(await self._spawn())
            for worker in self.workers:
                await worker.ready
        return self

    async def synthesize(self, question: str, qid: str) -> Outcome:
        for attempt in range(RETRIES + 1):
            await self.start()
            worker = min(self.workers, key=lambda w: len(w.waiting))
            self._count += 1
            n = self._count
            future = asyncio.get_running_loop().create_future()
            worker.waiting[n] = future
            worker.process.stdin.write(json.dumps({"n": n, "question": question, "qid": qid}).encode() + b"\n")
            try:
                await worker.process.stdin.drain()
                return await future
            except (WorkerDied, ConnectionError) as error:
                worker.waiting.pop(n, None)
                if attempt == RETRIES:
                    raise
                log.warning("%s; asking question %s again of a new worker", error, qid)

    async def aclose(self) -> None:
        """Close every worker's stdin (it finishes what it has, then exits) and wait for them."""
        for worker in self.workers:
            if worker.alive:
                worker.process.stdin.close()
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.process.wait(), timeout=60)
            except TimeoutError:
                worker.process.kill()
            await worker.reader
        self.workers = []
        await self.local.aclose()

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.alive]


def make_synthesizer(cfg):
    """A Synthesizer in this process (workflow.processes = 1, the default) or a ProcessPool of workers."""
    if int(cfg.workflow.get("processes", 1)) > 1:
        return ProcessPool(cfg)
    return Synthesizer.from_config(cfg)


# ---------------------------------------------------------------------------------------------------- worker
async def _serve_stdin() -> None:
    from ml_collections import ConfigDict

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0))
    out = os.fdopen(_OUT, "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, out)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)

    cfg = ConfigDict(json.loads(await reader.readline()))
    synth = Synthesizer.from_config(cfg)
    writer.write(b'{"ready": true}\n')
    tasks = set()

    async def one(n: int, question: str, qid: str) -> None:
        try:
            outcome = await synth.synthesize(question, qid)
        except Exception as error:   # as run_job does: one broken question must not stop the others
            log.error("question %s failed", qid, exc_info=error)
            outcome = Outcome(None, [f"internal_error: {type(error).__name__}: {str(error)[:300]}"])
        writer.write(json.dumps({"n": n, "record": outcome.record, "rejections": outcome.rejections},
                                ensure_ascii=False).encode() + b"\n")
        await writer.drain()

    while line := await reader.readline():
        task = json.loads(line)
        t = asyncio.create_task(one(task["n"], task["question"], task["qid"]))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:   # stdin closed: finish the questions in hand, then exit
        await asyncio.gather(*tasks)
    await synth.aclose()
    writer.close()


_OUT = 1
if __name__ == "__main__":
    # Answers go to the original stdout; anything a library prints goes to stderr instead of into the protocol.
    _OUT = os.dup(1)
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s synth worker: %(message)s")
    from synth.funnel import run_async
    run_async(_serve_stdin())
