"""Dynamic sampling: zero-variance groups are replaced by groups of further questions from the queue."""
import types

import numpy as np

from oresearcher.rl import grpo
from oresearcher.rl.train import sample_informative_groups

G = 4
# the reward of every episode of a question: "easy" / "hard" questions give the whole group one reward
REWARDS = {"easy": [1.0] * G, "hard": [0.0] * G, "mixed": [0.0, 1.0, 0.5, 1.0]}


def _sampler(calls):
    def sample(questions, round_):
        calls.append((list(questions), round_))
        episodes = [types.SimpleNamespace(question=q, group=i) for i, q in enumerate(questions) for _ in range(G)]
        rewards = np.array([REWARDS[q.split(":")[0]] for q in questions])
        adv, keep = grpo.grpo_advantages(rewards, np.ones_like(rewards, bool))
        return episodes, [None] * len(episodes), adv, keep
    return sample


def _queue(names):
    cursor = [0]

    def next_questions(n):
        out = [f"{names[(cursor[0] + i) % len(names)]}:{cursor[0] + i}" for i in range(n)]
        cursor[0] += n
        return out
    return next_questions, cursor


def test_zero_variance_groups_are_redrawn_until_enough_are_informative():
    calls = []
    queue, cursor = _queue(["easy", "mixed", "hard", "easy", "mixed", "hard", "mixed"])
    episodes, _, adv, keep, train, rounds = sample_informative_groups(_sampler(calls), queue, 3, 5)
    # round 0: easy, mixed, hard -> 1 informative; round 1: 2 more (easy, mixed) -> 2; round 2: 1 more (hard) ->
    # still 2; round 3: 1 more (mixed) -> 3
    assert [len(c[0]) for c in calls] == [3, 2, 1, 1] and rounds == 3 and cursor[0] == 7
    assert [episodes[i * G].question for i in train] == ["mixed:1", "mixed:4", "mixed:6"]
    assert keep.shape == (7, G) and adv.shape == (7, G)
    assert [e.group for e in episodes[::G]] == list(range(7))      # numbered across rounds
    assert all(np.abs(adv[i]).sum() > 0 for i in train)


def test_no_redraws_keeps_the_old_behaviour_and_the_bound_holds():
    calls = []
    queue, _ = _queue(["hard", "mixed"])
    *_, train, rounds = sample_informative_groups(_sampler(calls), queue, 2, 0)
    assert len(calls) == 1 and rounds == 0 and len(train) == 1
    calls = []
    queue, _ = _queue(["hard"])
    *_, train, rounds = sample_informative_groups(_sampler(calls), queue, 2, 2)
    assert len(calls) == 3 and rounds == 2 and train == []
