"""Data and reward agree: the funnel keeps what R_tool pays for (one band, read by both), the paper's rules stay
available, and the embedded teacher's trajectories can be sized for a token budget."""
import asyncio

from ml_collections import ConfigDict

from oresearcher import protocol
from oresearcher.rl.rewards import RewardConfig
from oresearcher.rl.warm_start import synth_overrides
from synth.config import load_config, sized_for
from synth.funnel import Rules, Synthesizer, hard_rules


def trace(n: int) -> str:
    """A valid trajectory with n distinct searches and n distinct crawls in one subtask, and a cited report."""
    out = ["<subtask_list>\n- q\n</subtask_list>\n<subtask>q</subtask>\n<think>a</think>\n<plan>b</plan>\n"]
    for k in range(n):
        out.append(f"<think>c</think>\n<web_search>query=x{k}&num=5</web_search>" + protocol.observation("hits"))
        out.append(f"<think>d</think>\n<crawl_page>url=https://a.org/{k}</crawl_page>"
                   + protocol.observation(f"## [A](https://a.org/{k})\nSource: https://a.org/{k}\ntext"))
    out.append("<subtask_answer>answer [1]</subtask_answer>\n<suggested_answer>The report [1].\n\nReferences\n"
               "[1]. https://a.org/0 - A</suggested_answer>")
    return "".join(out)


def test_one_home_for_the_band():
    cfg = load_config("configs/synth.py")
    reward = RewardConfig()
    assert (cfg.workflow.tool_low, cfg.workflow.tool_high) == (reward.tool_low, reward.tool_high) \
        == (protocol.TOOL_LOW, protocol.TOOL_HIGH) == (2, 8)
    assert Rules.of(cfg.workflow) == Rules(min_reasoning_steps=4, min_tool_calls=4, band=(2, 8))
    assert Rules.of(load_config("configs/synth.py", {"workflow.rules": "paper"}).workflow) == Rules(10, 5, None)


def test_the_funnel_rejects_what_the_reward_punishes_and_the_paper_rules_do_not():
    band = load_config("configs/synth.py").workflow
    paper = load_config("configs/synth.py", {"workflow.rules": "paper"}).workflow
    assert protocol.tool_reward(trace(9)) == -1.0 and protocol.tool_reward(trace(5)) == 0.5
    assert any(r.startswith("tool_band: N = min(#web_search, #crawl_page) = 9") for r in
               hard_rules(trace(9), protocol.extract_report(trace(9)), "q?", band))
    assert hard_rules(trace(5), protocol.extract_report(trace(5)), "q?", band) == []
    assert hard_rules(trace(9), protocol.extract_report(trace(9)), "q?", paper) == []
    # N counts distinct calls: eight copies of one search are one search
    repeated = trace(1).replace("<suggested_answer>", "<subtask>r</subtask><think>e</think>" + (
        "<web_search>query=x0&num=5</web_search>" + protocol.observation("hits")) * 7
        + "<subtask_answer>a [1]</subtask_answer>\n<suggested_answer>")
    assert protocol.count_tool_calls(repeated)["web_search"] == 8 and protocol.tool_n(repeated) == 1


def test_warm_start_passes_the_reward_band_and_its_sizes_to_the_synthesizer():
    config = ConfigDict({"reward": {"tool_low": 3, "tool_high": 6},
                         "warm_start": {"synth_tokens": 4000, "synth_overrides": ["teacher.search_num=1"]}})
    args = synth_overrides(config)
    sized = [f"--config.{k}={v}" for k, v in sized_for(4000).items() if k != "teacher.search_num"]
    assert args[:2] == ["--config.workflow.tool_low=3", "--config.workflow.tool_high=6"]
    assert set(sized) < set(args) and "--config.teacher.search_num=1" in args
    assert synth_overrides(ConfigDict({"warm_start": {}})) == []


def test_sized_trajectories_fit_their_budget_and_stay_in_the_band(tmp_path):
    budget = 5000
    overrides = {**sized_for(budget), "tools.cache_dir": str(tmp_path / "cache"), "workflow.candidates": 2}
    assert overrides["workflow.max_tokens"] == budget and overrides["workflow.min_subtasks"] >= 3
    cfg = load_config("configs/synth.py", overrides)

    async def run():
        synth = Synthesizer.from_config(cfg)
        try:
            return await asyncio.gather(*(synth.synthesize(q, f"q{i}") for i, q in enumerate(
                ["How did the printing press change European society?", "What is a volcano?"])))
        finally:
            await synth.aclose()

    for outcome in asyncio.run(run()):
        assert outcome.record is not None, outcome.rejections
        text = outcome.record["messages"][2]["content"]
        assert protocol.estimate_tokens(text) <= budget
        assert protocol.TOOL_LOW <= protocol.tool_n(text) <= protocol.TOOL_HIGH
