"""The composite reward: every R_tool branch, the R_format cases, the weights and normalisation, and a judge that
abstains (a real HTTP judge on loopback) masking the episode out of the loss."""
import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from oresearcher.rl import grpo, rewards

CFG = rewards.RewardConfig()


def episode(searches: int, crawls: int, answer: bool = True, close_last: bool = True) -> str:
    parts = ["<subtask_list>\n- a\n</subtask_list>\n<subtask>a</subtask>\n<think>t</think>\n<plan>p</plan>\n"]
    for i in range(searches):
        parts.append(f"<web_search>query=q{i}&num=3</web_search>\n<observation>\nresults {i}\n</observation>\n")
    for i in range(crawls):
        parts.append(f"<crawl_page>url=https://en.wikipedia.org/wiki/P{i}</crawl_page>\n"
                     f"<observation>\n# Synthesis Report\npage {i}\n</observation>\n")
    parts.append("<subtask_answer>sub [1]</subtask_answer>\n")
    if answer:
        parts.append("<suggested_answer>Report [1].\n\nReferences\n[1]. https://en.wikipedia.org/wiki/P0 - P0")
        parts.append("</suggested_answer>" if close_last else "")
    return "".join(parts)


@pytest.mark.parametrize("searches,crawls,expected", [
    (0, 0, 0.0),            # N = 0 < 2
    (1, 5, 0.0),            # N = min(1, 5) = 1 < 2
    (2, 2, 0.0),            # N = 2: lower edge, (2 - 2) / 6
    (5, 9, 0.5),            # N = 5: (5 - 2) / 6
    (8, 8, 1.0),            # N = 8: upper edge
    (9, 9, -1.0),           # N = 9 > 8: over-use penalty
    (12, 3, 1 / 6),         # many searches, few crawls: N = 3
])
def test_tool_reward_branches(searches, crawls, expected):
    r_tool, r_format = rewards.local_parts(episode(searches, crawls), CFG)
    assert r_tool == pytest.approx(expected)
    assert r_format == 1.0


def test_tool_reward_config_is_used():
    cfg = rewards.RewardConfig(tool_low=1, tool_high=3, tool_over_penalty=-0.5)
    assert rewards.local_parts(episode(2, 2), cfg)[0] == pytest.approx(0.5)
    assert rewards.local_parts(episode(4, 4), cfg)[0] == pytest.approx(-0.5)


@pytest.mark.parametrize("text,expected", [
    (episode(1, 1), 1.0),                                               # well formed, answer present
    (episode(1, 1, answer=False), 0.0),                                 # no <suggested_answer>
    (episode(1, 1, close_last=False), 0.0),                             # answer never closed
    (episode(1, 1).replace("</think>", ""), 0.0),                       # an unclosed tag
    (episode(1, 1).replace("</plan>", "</think>"), 0.0),                # closed with the wrong tag
    ("", 0.0),                                                          # empty response
    (episode(2, 2).replace("</observation>", "", 1), 0.0),              # an observation swallows the next turns
    (episode(1, 1).replace("</observation>", "", 2), 0.0),              # the last one swallows the answer
    ("<suggested_answer>just an answer</suggested_answer>", 1.0),      # minimal but symmetric
])
def test_format_reward_cases(text, expected):
    assert rewards.local_parts(text, CFG)[1] == expected


def test_composite_weights_and_normalisation():
    raw = rewards.RewardConfig(normalize="none")
    assert rewards.composite(0.5, 0.5, 1.0, raw) == pytest.approx(0.6 * 0.5 + 0.2 * 0.5 + 0.2)
    # unit: R_min = 0.2 * -1 = -0.2, R_max = 1.0
    assert rewards.composite(0.0, -1.0, 0.0, CFG) == pytest.approx(0.0)
    assert rewards.composite(1.0, 1.0, 1.0, CFG) == pytest.approx(1.0)
    assert rewards.composite(0.5, 0.0, 1.0, CFG) == pytest.approx((0.3 + 0.2 + 0.2) / 1.2)
    with pytest.raises(ValueError, match="normalize"):
        rewards.composite(0, 0, 0, rewards.RewardConfig(normalize="zscore"))


class _Judge(BaseHTTPRequestHandler):
    """A loopback judge that decides from the request content only (requests arrive concurrently, in any order):
    abstains on reports that mention 'ABSTAIN', fails (HTTP 500) on 'BROKEN', else scores by report length."""

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        if "ABSTAIN" in body["report"]:
            out = {"abstained": True, "reason": "report unreadable"}
        elif "BROKEN" in body["report"]:
            self.send_response(500)
            self.end_headers()
            return
        else:
            out = {"abstained": False, "overall": min(1.0, len(body["report"]) / 200), "judge": "stub",
                   "scores": {}}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.requests
    server.shutdown()


def test_abstaining_judge_masks_the_episode(judge_url):
    url, requests = judge_url
    good = episode(3, 3)
    abstain = good.replace("Report [1].", "ABSTAIN [1].")
    broken = good.replace("Report [1].", "BROKEN [1].")
    no_answer = episode(3, 3, answer=False)
    responses = [good, abstain, broken, no_answer]
    out = asyncio.run(rewards.score_all(url, ["q"] * 4, responses, CFG))
    assert [r.abstained for r in out] == [False, True, True, False]
    assert out[1].total is None and "unreadable" in out[1].reason
    assert out[2].total is None and "failed" in out[2].reason
    assert out[3].base == 0.0 and out[3].judge.startswith("none")      # no report: a real 0, judge not asked
    # requests arrive concurrently, in any order: find the good episode's request by its content
    assert len(requests) == 3 and all(r["question"] == "q" for r in requests)
    assert sorted(r["trajectory"] for r in requests) == sorted([good, abstain, broken])
    (good_request,) = [r for r in requests if r["trajectory"] == good]
    expected_base = min(1.0, len(good_request["report"]) / 200)
    assert out[0].total == pytest.approx(rewards.composite(expected_base, 1 / 6, 1.0, CFG))
    # the abstained episodes are masked out of the loss and the group statistics
    totals = np.array([[r.total if r.total is not None else 0.0 for r in out]])
    valid = np.array([[not r.abstained for r in out]])
    adv, keep = grpo.get_advantage_estimator("grpo")(totals, valid)
    assert keep.tolist() == [[True, False, False, True]]
    assert adv[0, 1] == 0.0 and adv[0, 2] == 0.0
    assert adv[0, 0] == pytest.approx(1.0, rel=1e-4) and adv[0, 3] == pytest.approx(-1.0, rel=1e-4)
