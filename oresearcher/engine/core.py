"""Continuous batching over a fixed number of slots.

Every slot holds one episode or none, and is in one of four states:
    free       no episode; the next queued prompt takes it at the start of the next engine step
    pending    has tokens its cache rows have not seen (a new prompt, or an observation that came back)
    decoding   sampling a turn
    parked     waiting for its call (a tool over HTTP) on the engine's background event loop
An engine step (1) admits queued prompts into free slots and collects finished calls (their tokens make the slot
pending), (2) prefills one chunk for the pending slots: only their rows, gathered, `prefill_chunk` tokens at
most, so a long observation never holds the others up for more than a chunk, (3) decodes up to `chunk` tokens
for every decoding slot, leaving the loop early when a slot's turn ends so its call goes out at once, and (4)
hands each ended turn to the agent: the episode ends (its slot is free for the next prompt) or the slot parks.
When no slot can compute, the step waits for the first call to come back. Parked slots cost nothing but their
cache rows; the others keep decoding.

On a mesh of more than one device the weight copy and the cache take the inference layout (layout.py: bf16 on
accelerators, tensor-parallel over heads / MLP / vocabulary, the slots over the remaining devices), made from the
training parameters once per policy version.

The maths are the Sampler's: the same per-layer weight copy (Sampler.weights), the same cached forward (the
decoder's own layer function, `Decoder._layer_fn`), the same sampling and stop automaton, so a greedy episode
here equals its lockstep run. Each sampled token is fed back in the step that sampled it (the turn's last one
too), so a slot's cache rows always hold all of its tokens but the pending ones. At temperature > 0 the token at
position p of episode e is drawn with the key of (seed, e, p): a run's episodes do not depend on the number of
slots, the engine steps or the order in which calls come back (up to float rounding of differently shaped calls).

A run may also be fed while it goes (`run(..., feed=)`: a server keeps one run going and feeds it its requests).
Each fed episode brings its own sampling parameters, so temperature, top-p and top-k are per-row arrays of the
decode program and the rows' stop sets share one joint automaton (stops.py); its draws use the key of (its seed, 0,
p), so a request with a given seed gets the same tokens whatever else the slots hold.

Shapes come from a few buckets, so nothing compiles in steady state: decode runs on all slots at once (inactive
slots write nothing); prefill on the pending slots' count rounded up to slots / 4**k and the longest pending
piece rounded up to prefill_chunk / 4**k (>= min_bucket), see _quarters; the cache on the slots' furthest reach
rounded up to a power of two (>= 128), grown or shrunk (one copy) as the episodes in the slots grow or finish;
the joint stop table's rows to a power of two (>= 8).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

import httpx
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from oresearcher import sampler as sampler_lib
from oresearcher import sharding, synth_client
from oresearcher.engine import paged
from oresearcher.engine.agent import Agent
from oresearcher.engine.stops import StopTables
from oresearcher.sampler import FINISH_REASONS, Completion, Sampler, SamplingParams

FREE, PENDING, DECODING, PARKED = range(4)

# feed(idle) -> prompts to queue, each with its sampling parameters, or None once closed (see Engine.run)
Feed = Callable[[bool], Sequence[tuple[Sequence[int], SamplingParams]] | None]


@dataclasses.dataclass
class _Slot:
    state: int = FREE
    episode: int = -1
    params: SamplingParams | None = None   # the episode's sampling parameters
    stream: int = 0                   # its draws use the keys of (params.seed, stream, position)
    tokens: list[int] = dataclasses.field(default_factory=list)   # the episode so far
    written: int = 0                  # tokens in the cache rows
    budget: int = 0                   # tokens this turn may still sample (counted from the turn's start)
    turn_tokens: list[int] = dataclasses.field(default_factory=list)
    turn_logprobs: list[float] = dataclasses.field(default_factory=list)
    stop_state: int = 0               # its stop set's automaton state (from 0), carried from chunk to chunk in a turn
    finish_reason: str = ""
    call: concurrent.futures.Future | None = None


class _Loop:
    """An asyncio event loop on a daemon thread with one httpx client: calls run there while decoding goes on."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="oresearcher-engine-calls")
        self.thread.start()
        self.client = asyncio.run_coroutine_threadsafe(self._client(), self.loop).result()

    async def _client(self):
        # the calls go to the synth service: the client sends its token ($SYNTH_TOKEN) when one is set
        return synth_client.async_client(limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    def submit(self, call) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(call(self.client), self.loop)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.client.aclose(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


# ------------------------------------------------------------------------------------------------ programs
def _prefill_rows(graphdef, state, weights, cache, logits, rows, tokens, positions, last_col, has, *, window: int):
    """Prefill tokens [R, C] at positions [R, C] (== cache length: padding, dropped) into cache rows `rows` [R]
    (== number of slots: a padding row); logits[rows[r]] becomes the logits after column last_col[r] where has[r]
    (the row's pending tokens end in this chunk). Only the R rows are read and written."""
    model = nnx.merge(graphdef, state)
    sub = jax.tree.map(lambda a: a[rows], cache)
    hidden, sub = sampler_lib._cached_forward(model, weights, sub, tokens, positions, window)
    cache = jax.tree.map(lambda a, s: a.at[rows].set(s, mode="drop"), cache, sub)
    last = jnp.take_along_axis(hidden, last_col[:, None, None], axis=1)
    new = sampler_lib.head_logits(model, weights, last)[:, 0]
    logits = logits.at[rows].set(jnp.where(has[:, None], new, logits[rows]), mode="drop")
    return logits, cache


def _decode_chunk(graphdef, state, weights, cache, logits, pos, active, budget, stop_state, seeds, streams,
                  temperature, top_p, top_k, table, eos, *, steps: int, use_filter: bool, window: int):
    """Up to `steps` tokens for every active row: sample from `logits` [B, V] with the row's temperature, top_p,
    top_k [B] (row b's token at position p with the key of (seeds[b], streams[b], p)), feed the token back at
    pos [B], repeat; a row stops at a stop string (stop_state [B]: the state so far this turn in the joint
    automaton `table`, stops.py), EOS or after budget[b] tokens. The loop ends early
    once any row has stopped. Returns tokens [B, steps], logprobs [B, steps], count [B], finish [B] (-1: still
    going, else an index into FINISH_REASONS), the stop states, the logits for each row's next token, and the
    cache."""
    model = nnx.merge(graphdef, state)
    b = logits.shape[0]

    def forward(cache, tok, pos, live):
        if "table" in cache:      # paged: a position of -1 writes nothing
            hidden, pool = paged.forward(model, weights, {"k": cache["k"], "v": cache["v"]},
                                         cache["table"], tok[:, None], jnp.where(live, pos, -1)[:, None])
            return hidden, {**pool, "table": cache["table"]}
        slots = cache["segment_ids"].shape[1]   # dense: a position == slots writes nothing
        return sampler_lib._cached_forward(model, weights, cache, tok[:, None],
                                           jnp.where(live, pos, slots)[:, None], window)

    def cond(c):
        i, done, ended = c[0], c[3], c[-1]
        return (i < steps) & ~jnp.all(done) & ~ended

    def body(c):
        i, cache, logits, done, pos, stop_state, count, finish, out_t, out_lp, _ = c
        live = ~done
        tok, out_t, out_lp, count, stop_state, finish, ended = sampler_lib.take_token(
            logits, _row_keys(seeds, streams, pos), i, live, out_t, out_lp, count, stop_state, finish, budget, table,
            eos, temperature, top_p, top_k, use_filter)
        hidden, cache = forward(cache, tok, pos, live)
        logits = jnp.where(live[:, None], sampler_lib.head_logits(model, weights, hidden)[:, 0], logits)
        return (i + 1, cache, logits, done | ended, pos + live, stop_state, count, finish, out_t, out_lp,
                jnp.any(ended))

    init = (jnp.int32(0), cache, logits, ~active, pos, stop_state, jnp.zeros((b,), jnp.int32),
            jnp.full((b,), -1, jnp.int32), jnp.zeros((b, steps), jnp.int32), jnp.zeros((b, steps), jnp.float32),
            jnp.bool_(False))
    _, cache, logits, _, _, stop_state, count, finish, out_t, out_lp, _ = jax.lax.while_loop(cond, body, init)
    return out_t, out_lp, count, finish, stop_state, logits, cache


def _row_keys(seeds, streams, pos):
    """One key per row from (seed, stream, position), the stream an RL run's episode number: an episode's draws
    then depend on nothing but its own tokens, not on the slot it took, the engine step, or when its tool calls
    came back."""
    key = lambda s, e, p: jax.random.fold_in(jax.random.fold_in(jax.random.key(s), e), p)
    return jax.vmap(key)(seeds, streams, pos)


def _prefill_paged(graphdef, state, weights, pool, logits, rows, table, tokens, positions, last_col, has):
    """_prefill_rows on the paged cache: the rows' blocks are table [R, W]; a position of -1 is padding."""
    model = nnx.merge(graphdef, state)
    hidden, pool = paged.forward(model, weights, pool, table, tokens, positions)
    last = jnp.take_along_axis(hidden, last_col[:, None, None], axis=1)
    new = sampler_lib.head_logits(model, weights, last)[:, 0]
    logits = logits.at[rows].set(jnp.where(has[:, None], new, logits[rows]), mode="drop")
    return logits, pool


def _take_prefix(cache, width: int):
    """Row 0's first `width` slots: [1, K, width, hd] per layer and segment ids [1, width]."""
    return {"k": tuple(a[:1, :, :width] for a in cache["k"]), "v": tuple(a[:1, :, :width] for a in cache["v"]),
            "segment_ids": cache["segment_ids"][:1, :width]}


def _put_prefix(cache, prefix, row):
    """The cache with the prefix's slots copied into the front of `row` (a traced index: one program)."""
    put = lambda a, p: jax.lax.dynamic_update_slice(a, p, (row,) + (0,) * (a.ndim - 1))
    return jax.tree.map(put, cache, prefix)


def _resize(cache, slots: int):
    """The cache with `slots` slots: its front copied (shrinking) or zeros appended (growing)."""
    def one(a, axis):
        have = a.shape[axis]
        if have >= slots:
            return jax.lax.slice_in_dim(a, 0, slots, axis=axis)
        pad = [(0, 0)] * a.ndim
        pad[axis] = (0, slots - have)
        return jnp.pad(a, pad)
    return {"k": tuple(one(a, 2) for a in cache["k"]), "v": tuple(one(a, 2) for a in cache["v"]),
            "segment_ids": one(cache["segment_ids"], 1)}


def _quarters(n: int, top: int, least: int) -> int:
    """The smallest of top, top / 4, top / 16, ... and least that holds n (top when n > top).

    Prefill's rows and widths come from these buckets: every (rows, width, cache size) met compiles a program
    (seconds each for a 30-layer model), and quarters give a third as many shapes per dimension as powers of
    two for at most 4x padding, in the few prefill calls that are not decode-bound."""
    size = top
    while size // 4 >= max(n, least, 1):
        size //= 4
    return least if n <= least else size


def _check_prompt(i: int, prompt: Sequence[int], max_len: int) -> None:
    if not prompt or len(prompt) >= max_len:
        raise ValueError(f"Engine.run: prompt {i} has {len(prompt)} tokens; it needs 1 to max_len - 1 "
                         f"(max_len={max_len}): raise max_len or shorten the prompt")


# ------------------------------------------------------------------------------------------------- engine
class Engine:
    """Continuous batching on one model. `model` may be sharded (sharding.shard_model): the cache then follows
    its mesh and rules, as the Sampler's does."""

    def __init__(self, model, tokenizer=None, *, slots: int = 8, chunk: int = 16, prefill_chunk: int = 512,
                 min_bucket: int = 16, eos_ids: Sequence[int] | None = None, weight_layout: str | None = None,
                 share_prefix: bool = True, kv: str = "dense", block: int = 16, tensor: int = 0):
        """slots: episodes decoded at once; chunk: tokens per decode call; prefill_chunk: the most tokens a
        prefill call gives one slot; share_prefix: prefill the prompts' common prefix (system prompt and chat
        template) once per run and copy its cache entries into each slot a prompt takes. eos_ids and
        weight_layout as for Sampler (whose weight copy, stop tables and sampling the engine uses).
        kv: "dense" (each slot's rows [K, S, hd], S the bucket of the furthest reach of any slot: attention in
        place, with the CPU kernels where built) or "paged" (paged.py: blocks of `block` tokens held by use).
        On a mesh of more than one device the weights and the cache take the inference layout (layout.py):
        tensor-parallel over `tensor` devices (0: the largest that divides the heads), the slots over the rest."""
        if slots < 1 or chunk < 1:
            raise ValueError(f"Engine: slots ({slots}) and chunk ({chunk}) must be >= 1")
        if kv not in ("dense", "paged"):
            raise ValueError(f"Engine: kv={kv!r}: use 'dense' or 'paged'")
        if kv == "paged" and weight_layout is None:
            weight_layout = "own" if sampler_lib._default_layout(model) == "own" else "blocks"
        self.sampler = Sampler(model, tokenizer, eos_ids=eos_ids, prefill_chunk=prefill_chunk,
                               min_bucket=min_bucket, share_prefix=False, weight_layout=weight_layout,
                               slots=slots, tensor=tensor)
        self.placed = self.sampler.placed   # where the cache goes: the layout's mesh and rules, or the model's
        self.model = model
        self.slots = slots
        self.chunk = chunk
        self.prefill_chunk = prefill_chunk
        self.min_bucket = min_bucket
        self._prefill = jax.jit(_prefill_rows, static_argnums=0, donate_argnums=(3, 4), static_argnames=("window",))
        self._decode = jax.jit(_decode_chunk, static_argnums=0, donate_argnums=(3, 4),
                               static_argnames=("steps", "use_filter", "window"))
        self._resize = jax.jit(_resize, static_argnums=1)
        self._take_prefix = jax.jit(_take_prefix, static_argnums=1)
        self._put_prefix = jax.jit(_put_prefix, donate_argnums=0)
        self._prefill_paged = jax.jit(_prefill_paged, static_argnums=0, donate_argnums=(3, 4))
        self._grow_pool = jax.jit(paged.grow_pool, static_argnums=1)
        self._stops = StopTables(self.sampler)
        self.share_prefix = share_prefix
        self.kv = kv
        self.block = block
        self.alloc: paged.BlockAllocator | None = None
        self.cache = None
        self.logits = None

    # ------------------------------------------------------------------------------------------ cache size
    def _fit(self, max_len: int, reach: int, *, shrink: bool = False) -> None:
        """Size the cache for slot positions < reach: grow when reach is past it, or with shrink only shrink, to
        the bucket of reach when that is at most half the cache (growing is _reserve's, when a slot needs it:
        growing here, to the reach plus a prefill chunk, took every idle server to a 1024-slot cache)."""
        spare = sampler_lib._spare(self.slots)
        need = sampler_lib._window(max_len, max(reach, 1)) + spare
        if self.cache is None:
            self.cache = sampler_lib.init_cache(self.placed, self.slots, need)
            return
        have = self.cache["segment_ids"].shape[1]
        if (need > have and not shrink) or (shrink and 2 * need <= have):
            self.cache = self._resize(self.cache, need)
            if self.placed.mesh is not None:   # a shrink or a pad keeps the layout; re-place to be sure
                target = sampler_lib.init_cache(self.placed, self.slots, 1)
                self.cache = jax.tree.map(lambda a, t: jax.device_put(a, t.sharding), self.cache, target)

    def _reserve(self, max_len: int, wants) -> None:
        """Room for each (slot, tokens) in `wants`: slot positions < tokens (dense: the cache's size; paged: the
        slot's blocks, the pool grown to a power of two of blocks when the free ones run out)."""
        if self.kv == "dense":
            self._fit(max_len, max(t for _, t in wants))
            return
        a = self.alloc
        missing = sum(a.missing(b, t) for b, t in wants)
        if missing > len(a.free):
            size = sampler_lib._bucket(a.in_use() + missing + 1, 64)
            self.cache = self._grow_pool(self.cache, size)
            a.grow_to(size)
        for b, t in wants:
            a.extend(b, t)

    def _release(self, b: int) -> None:
        if self.kv == "paged":
            self.alloc.release(b)

    def _table(self, rows) -> np.ndarray:
        """The rows' block table, as wide as the bucket of the most blocks any of them holds."""
        width = sampler_lib._bucket(max(len(self.alloc.rows[r]) for r in rows if r < self.slots), 1)
        return self.alloc.table(rows, width)

    @property
    def window(self) -> int:
        return self.cache["segment_ids"].shape[1] - sampler_lib._spare(self.slots)

    # ------------------------------------------------------------------------------------------------ run
    def run(self, prompts: Sequence[Sequence[int]], agent: Agent, params: SamplingParams,
            max_len: int, *, feed: Feed | None = None) -> dict[str, float]:
        """Run every prompt's episode to its end (each holds at most max_len tokens); returns statistics:
        time/generate (wall seconds), slot_occupancy (time-weighted share of slots holding an episode),
        decode_rows (mean share of slots decoding in a decode call), engine_steps, prefill_calls, decode_calls,
        and spans: per episode of `prompts`, the engine steps at which it took a slot and left it.

        feed: more episodes while the run goes (a server's requests). It is called at the start of every engine
        step as feed(idle), idle True when no episode is queued or in a slot (it may then block until it has
        work), and returns a list of (prompt, SamplingParams) to queue, or None once it is closed; the run ends
        when every episode has ended and the feed is closed. The k-th fed prompt is episode len(prompts) + k;
        it samples with its own parameters (its turns' budgets are still the agent's) and its draws use the keys
        of (its seed, 0, position), so they depend on its seed alone."""
        for i, p in enumerate(prompts):
            _check_prompt(i, p, max_len)
        weights = self.sampler.weights()
        graphdef, state = self.sampler.split()
        slots = [_Slot() for _ in range(self.slots)]
        queue = collections.deque((i, list(p), params, i) for i, p in enumerate(prompts))
        if self.kv == "dense":
            self._fit(max_len, max((len(p) for p in prompts[:self.slots]), default=1))
        elif self.alloc is None:
            self.alloc = paged.BlockAllocator(self.slots, self.block, 64)
            self.cache = paged.init_pool(self.placed, 64, self.block)
        if self.logits is None:
            self.logits = jnp.zeros((self.slots, self.model.cfg.vocab_size), jnp.float32)
            plan = self.sampler.plan
            if plan is not None:    # as the programs leave them: slots over data, the vocabulary over tensor
                self.logits = jax.device_put(self.logits, sharding.logical_sharding(
                    ("activation_batch", "activation_vocab"), plan.mesh, plan.rules, self.logits.shape))
        prefix, shared = self._shared_prefix(prompts, graphdef, state, weights, max_len)
        stats = {"engine_steps": 0, "prefill_calls": 0, "decode_calls": 0, "decode_rows": 0.0, "kv_blocks_peak": 0}
        spans = [[-1, -1] for _ in prompts]     # fed episodes have none: a server's run would hold one per request
        occupied_time, t0, last = 0.0, time.perf_counter(), time.perf_counter()
        fed, feeding = len(prompts), feed is not None
        loop = _Loop()

        def start_turn(s: _Slot, episode: int):
            s.budget = min(agent.budget(episode), max_len - len(s.tokens))
            s.turn_tokens, s.turn_logprobs = [], []

        def leave(b: int):
            s = slots[b]
            s.state = FREE
            self._release(b)
            if s.episode < len(spans):
                spans[s.episode][1] = stats["engine_steps"]

        ok = False
        try:
            while feeding or queue or any(s.state != FREE for s in slots):
                now = time.perf_counter()
                occupied_time += (now - last) * sum(s.state != FREE for s in slots) / self.slots
                last = now
                stats["engine_steps"] += 1
                freed = False
                if feeding:
                    more = feed(not queue and all(s.state == FREE for s in slots))
                    feeding = more is not None
                    for p, fed_params in more or ():
                        _check_prompt(fed, p, max_len)
                        queue.append((fed, list(p), fed_params, 0))
                        fed += 1
                # (1) calls that came back, then new episodes into free slots
                for b, s in enumerate(slots):
                    if s.state == PARKED and s.call.done():
                        more = agent.on_result(s.episode, s.call.result())
                        s.call = None
                        if more is None:
                            leave(b)
                            freed = True
                        else:
                            s.tokens.extend(more)
                            if len(s.tokens) >= max_len:
                                raise ValueError(f"Engine.run: episode {s.episode} holds {len(s.tokens)} tokens "
                                                 f"after its observation, max_len={max_len}: the agent must end "
                                                 f"an episode that has no room left")
                            s.state = PENDING
                            start_turn(s, s.episode)
                for b, s in enumerate(slots):
                    if s.state == FREE and queue:
                        i, prompt, s.params, s.stream = queue.popleft()
                        s.state, s.episode, s.tokens, s.written = PENDING, i, prompt, 0
                        if prefix is not None and self.kv == "paged":
                            self.alloc.share(b, prefix)
                            s.written = shared
                        elif prefix is not None:
                            self.cache = self._put_prefix(self.cache, prefix, jnp.int32(b))
                            s.written = shared
                        if i < len(spans):
                            spans[i][0] = stats["engine_steps"]
                        start_turn(s, i)
                # (2) one prefill chunk for the pending slots
                pending = [b for b, s in enumerate(slots) if s.state == PENDING]
                if pending:
                    self._prefill_step(slots, pending, graphdef, state, weights, max_len)
                    stats["prefill_calls"] += 1
                # (3) a decode chunk for the decoding slots
                decoding = [b for b, s in enumerate(slots) if s.state == DECODING]
                if decoding:
                    stats["decode_calls"] += 1
                    stats["decode_rows"] += len(decoding) / self.slots
                    ended = self._decode_step(slots, decoding, graphdef, state, weights, max_len)
                    # (4) ended turns: the episode ends or its call goes out
                    for b in ended:
                        s = slots[b]
                        call = agent.on_turn(s.episode, Completion(s.turn_tokens, s.turn_logprobs,
                                                                   s.finish_reason))
                        if call is None:
                            leave(b)
                            freed = True
                        else:
                            s.state, s.call = PARKED, loop.submit(call)
                elif not pending:
                    parked = [s.call for s in slots if s.state == PARKED]
                    if parked:   # while feeding, wake now and then to admit what the feed brings
                        concurrent.futures.wait(parked, timeout=0.05 if feeding else None,
                                                return_when=concurrent.futures.FIRST_COMPLETED)
                if self.kv == "paged":
                    stats["kv_blocks_peak"] = max(stats["kv_blocks_peak"], self.alloc.in_use())
                if freed and self.kv == "dense":
                    # a long episode may have ended: give back what the others cannot reach within a chunk
                    reach = max([len(s.tokens) for s in slots if s.state != FREE] + [shared, 1])
                    self._fit(max_len, reach + max(self.chunk, self.prefill_chunk), shrink=True)
            ok = True
        finally:
            loop.close()
            if not ok:      # a program may have failed after its cache was donated: the next run starts afresh
                self.cache = self.logits = self.alloc = None
            elif self.kv == "paged":      # the run's hold on the shared prefix blocks, and any slot left over
                for blk in prefix or []:
                    self.alloc.refs[blk] -= 1
                    if self.alloc.refs[blk] == 0:
                        self.alloc.free.append(blk)
                for b in range(self.slots):
                    self.alloc.release(b)
        wall = time.perf_counter() - t0
        stats["decode_rows"] /= max(stats["decode_calls"], 1)
        return {"time/generate": wall, "slot_occupancy": occupied_time / max(wall, 1e-9), **stats, "spans": spans}

    def _shared_prefix(self, prompts, graphdef, state, weights, max_len):
        """(the cache entries of the prompts' common prefix, its length), prefilled once in slot 0's rows; or
        (None, 0) when there is none worth sharing."""
        n = sampler_lib.common_prefix(prompts) if self.share_prefix and len(prompts) > 1 else 0
        if n < self.min_bucket:
            return None, 0
        if self.kv == "paged":      # whole blocks only: a slot never writes into a block it shares
            n = n // self.block * self.block
            if n < self.min_bucket:
                return None, 0
        else:
            self._fit(max_len, n)
        slot = _Slot(state=PENDING, tokens=list(prompts[0][:n]))
        while slot.written < n:
            self._prefill_step([slot], [0], graphdef, state, weights, max_len)
        if self.kv == "dense":
            return self._take_prefix(self.cache, sampler_lib._window(max_len, n)), n
        blocks = list(self.alloc.rows[0])
        self.alloc.refs[blocks] += 1            # held by this run until it ends
        self.alloc.release(0)
        return blocks, n

    # ------------------------------------------------------------------------------------------- steps
    def _prefill_step(self, slots, pending, graphdef, state, weights, max_len):
        pieces = {b: slots[b].tokens[slots[b].written:] for b in pending}
        size = _quarters(max(len(p) for p in pieces.values()), self.prefill_chunk, self.min_bucket)
        self._reserve(max_len, [(b, slots[b].written + min(size, len(pieces[b]))) for b in pending])
        n_slots = self.cache["segment_ids"].shape[1] if self.kv == "dense" else -1
        r = self.sampler.rows(_quarters(len(pending), self.slots, 1))
        rows = np.full((r,), self.slots, np.int32)
        tok = np.zeros((r, size), np.int32)
        pos = np.full((r, size), n_slots, np.int32)
        last_col = np.zeros((r,), np.int32)
        has = np.zeros((r,), bool)
        for j, b in enumerate(pending):
            piece = pieces[b][:size]
            rows[j] = b
            tok[j, :len(piece)] = piece
            pos[j, :len(piece)] = slots[b].written + np.arange(len(piece))
            last_col[j] = len(piece) - 1
            has[j] = len(piece) == len(pieces[b])
        if self.kv == "paged":
            self.logits, self.cache = self._prefill_paged(
                graphdef, state, weights, self.cache, self.logits, jnp.asarray(rows), jnp.asarray(self._table(rows)),
                jnp.asarray(tok), jnp.asarray(pos), jnp.asarray(last_col), jnp.asarray(has))
        else:
            self.logits, self.cache = self._prefill(graphdef, state, weights, self.cache, self.logits,
                                                    jnp.asarray(rows), jnp.asarray(tok), jnp.asarray(pos),
                                                    jnp.asarray(last_col), jnp.asarray(has), window=self.window)
        for j, b in enumerate(pending):
            s = slots[b]
            s.written += min(size, len(pieces[b]))
            if has[j]:
                s.state = DECODING
                s.stop_state = 0

    def _decode_step(self, slots, decoding, graphdef, state, weights, max_len):
        """Decode a chunk, each decoding slot with its episode's sampling parameters; returns the slots whose turn
        ended (their finish_reason set)."""
        self._reserve(max_len, [(b, min(slots[b].written + self.chunk, max_len)) for b in decoding])
        live = [slots[b].params for b in decoding]
        table, starts = self._stops([p.stop for p in live])
        use_filter = any(p.temperature > 0 and (p.top_p < 1.0 or p.top_k > 0) for p in live)
        active = np.zeros((self.slots,), bool)
        active[decoding] = True
        # the others are inactive: greedy, no filter, from state 0 (they sample nothing that is kept)
        row = lambda f, off, dtype: np.array([f(s) if s.state == DECODING else off for s in slots], dtype)
        pos = np.array([s.written for s in slots], np.int32)
        budget = row(lambda s: s.budget - len(s.turn_tokens), 0, np.int32)
        start = row(lambda s: starts[s.params.stop], 0, np.int32)
        stop_state = start + row(lambda s: s.stop_state, 0, np.int32)
        seeds = row(lambda s: s.params.seed % 2**32, 0, np.uint32)
        streams = row(lambda s: s.stream, 0, np.int32)
        temperature = row(lambda s: s.params.temperature, 0.0, np.float32)
        top_p = row(lambda s: s.params.top_p, 1.0, np.float32)
        top_k = row(lambda s: s.params.top_k, 0, np.int32)
        cache = self.cache
        if self.kv == "paged":
            cache = {**cache, "table": jnp.asarray(self._table(range(self.slots)))}
        out_t, out_lp, count, finish, stop_state, self.logits, cache = self._decode(
            graphdef, state, weights, cache, self.logits, *map(jnp.asarray, (
                pos, active, budget, stop_state, seeds, streams, temperature, top_p, top_k)),
            table, self.sampler._eos, steps=self.chunk, use_filter=use_filter,
            window=self.window if self.kv == "dense" else 0)
        self.cache = cache if self.kv == "dense" else {"k": cache["k"], "v": cache["v"]}
        out_t, out_lp, count, finish, stop_state = map(np.asarray, jax.device_get((out_t, out_lp, count, finish,
                                                                                    stop_state)))
        ended = []
        for b in decoding:
            s, n = slots[b], int(count[b])
            ids = out_t[b, :n].tolist()
            s.tokens.extend(ids)
            s.turn_tokens.extend(ids)
            s.turn_logprobs.extend(out_lp[b, :n].tolist())
            s.written += n
            s.stop_state = int(stop_state[b]) - int(start[b])
            if finish[b] >= 0:
                s.finish_reason = FINISH_REASONS[int(finish[b])]
                ended.append(b)
        return ended
