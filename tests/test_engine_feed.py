"""A run fed while it goes (what the server does with its requests): each fed episode samples with its own
temperature, top-p, top-k, stop strings and seed, and gets the same tokens alone as beside others in fewer slots;
the feed is asked with idle=True when the run has nothing to do, and its None ends the run."""
import numpy as np
from flax import nnx

from oresearcher.engine import Engine
from oresearcher.model import PRESETS, Decoder
from oresearcher.sampler import SamplingParams


class Bytes:
    """The tiny model's 256 ids as single bytes, so stop strings are plain characters."""

    def token_bytes(self):
        return [bytes([i]) for i in range(256)]


class OneTurn:
    """Each episode is one turn of budgets[e] tokens (a served request); keeps the completions."""

    def __init__(self, budgets):
        self.budgets, self.out = budgets, {}

    def budget(self, e):
        return self.budgets[e]

    def on_turn(self, e, out):
        self.out[e] = out
        return None

    def on_result(self, e, result):
        raise AssertionError("one-turn episodes make no calls")


class Schedule:
    """A feed that hands out bursts[k] on its k-th call (then nothing) and closes once all are out and the run is
    idle. Keeps the idle flags it was called with."""

    def __init__(self, bursts):
        self.bursts, self.calls = list(bursts), []

    def __call__(self, idle):
        self.calls.append(idle)
        if len(self.calls) <= len(self.bursts):
            return self.bursts[len(self.calls) - 1]
        return None if idle else []


LETTERS = tuple("abcdefghijklmnop")      # 16 of 256 ids: most sampled turns of 30 tokens meet one
REQUESTS = [   # (prompt length, budget, params)
    (9, 30, SamplingParams(temperature=1.0, stop=LETTERS, seed=3)),
    (17, 12, SamplingParams(temperature=0.0, stop=())),
    (5, 30, SamplingParams(temperature=1.0, top_p=0.9, stop=("xy", "q"), seed=4)),
    (30, 25, SamplingParams(temperature=0.7, top_k=5, stop=LETTERS, seed=5)),
    (12, 8, SamplingParams(temperature=1.0, stop=(), seed=6)),
    (7, 30, SamplingParams(temperature=1.0, stop=LETTERS, seed=3)),
]


def test_fed_episodes_sample_with_their_own_parameters_whatever_else_runs():
    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    prompts = [[int(x) for x in rng.integers(3, 250, n)] for n, _, _ in REQUESTS]
    budgets = [b for _, b, _ in REQUESTS]
    engine = Engine(model, Bytes(), eos_ids=(), slots=2, chunk=4)
    alone = []
    for prompt, budget, (_, _, params) in zip(prompts, budgets, REQUESTS):
        agent = OneTurn([budget])
        engine.run([], agent, SamplingParams(), max_len=128, feed=Schedule([[(prompt, params)]]))
        alone.append(agent.out[0])

    # request 0 as the run's own prompt (episode 0 draws with stream 0, as a fed one does), the others fed in two
    # bursts: more episodes than slots, parameters and stop sets mixed in one decode call
    agent = OneTurn(budgets)
    fed = [(p, params) for p, (_, _, params) in zip(prompts, REQUESTS)]
    feed = Schedule([fed[1:3], [], [], fed[3:]])
    stats = Engine(model, Bytes(), eos_ids=(), slots=2, chunk=4).run(
        prompts[:1], agent, REQUESTS[0][2], max_len=128, feed=feed)
    for e, want in enumerate(alone):
        got = agent.out[e]
        assert (got.tokens, got.finish_reason) == (want.tokens, want.finish_reason), e
        np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5, rtol=0)
    assert {o.finish_reason for o in alone} == {"stop", "length"}
    assert len(alone[1].tokens) == 12 and alone[0].tokens != alone[5].tokens
    assert not feed.calls[1] and feed.calls[-1]           # busy while it had work; closed once idle
    assert len(stats["spans"]) == 1 and stats["spans"][0][1] > 0
