"""FACT: statement-URL extraction, pages through the synth crawl cache, a scripted judge over real HTTP."""
import asyncio
import json
import re
from pathlib import Path

import pytest

from experiments.eval import fact

REPORT_A = """# Coral reefs

Coral reefs are underwater ecosystems built by reef-building corals [1]. Reefs are made of colonies of coral
polyps held together by calcium carbonate [1]. The Great Barrier Reef is the world's largest coral reef
system [2]. The Great Barrier Reef is painted purple every spring [2]. Some claim cites a page that does
not exist [3]. This sentence cites a reference that is not listed [9].

## References
[1]. https://en.wikipedia.org/wiki/Coral_reef - Coral reef
[2]. https://en.wikipedia.org/wiki/Great_Barrier_Reef - Great Barrier Reef
[3]. https://en.wikipedia.org/wiki/No_such_article_for_the_fact_test - Missing
"""

REPORT_B = """Photosynthesis converts light energy into chemical energy [1]. Steam engines use steam as their
working fluid [2].

References
[1]. https://en.wikipedia.org/wiki/Photosynthesis - Photosynthesis
[2]. https://en.wikipedia.org/wiki/Steam_engine - Steam engine
"""


def test_extract_citations_pairs_statements_with_reference_urls():
    pairs, dangling = fact.extract_citations(REPORT_A)
    assert dangling == 1
    assert [(p.number, p.url.rsplit("/", 1)[1]) for p in pairs] == [
        (1, "Coral_reef"), (1, "Coral_reef"), (2, "Great_Barrier_Reef"), (2, "Great_Barrier_Reef"),
        (3, "No_such_article_for_the_fact_test")]
    assert pairs[0].statement == "Coral reefs are underwater ecosystems built by reef-building corals."
    assert "[" not in "".join(p.statement for p in pairs)


def test_extract_citations_on_released_model_output():
    """A real report of the released 72B model (Chinese, '[n] URL - Title' references, markers like [3] [6])."""
    path = Path(__file__).parent / "fixtures" / "released-rl-72b-traces.jsonl"
    if not path.exists():
        pytest.skip("fixture of the released traces not present")
    row = next(json.loads(line) for line in path.open(encoding="utf-8") if json.loads(line)["id"] == 1)
    pairs, _ = fact.extract_citations(row["article"])
    urls = {p.url for p in pairs}
    assert len(pairs) >= 10 and "https://m.cyzone.cn/article/752775" in urls
    assert all(not re.search(r"\[\d+\]", p.statement) for p in pairs)


def statements_of(prompt: str) -> list[str]:
    block = prompt.split("<statements>")[1].split("</statements>")[0]
    return [re.sub(r"^\d+\.\s*", "", line) for line in block.strip().splitlines()]


def scripted_support(request):
    """'purple' is unsupported, everything else supported; the steam engine page always gets prose."""
    prompt = request["messages"][-1]["content"]
    if "heat engine" in prompt.split("</reference>")[0]:
        return "The statements look plausible to me."
    labels = ["unsupported" if "purple" in s else "supported" for s in statements_of(prompt)]
    return json.dumps([{"idx": i, "result": label} for i, label in enumerate(labels, 1)])


def test_fact_over_http_with_real_pages(tmp_path):
    from scripted_openai import Faults, ScriptedOpenAI

    from experiments.eval.judge import Judge
    from synth.tools import Tools

    tools = Tools.from_config({"cache_dir": str(tmp_path), "search": {"backend": "local"},
                               "crawl": {"backend": "local"}})
    rows = [{"id": "a", "prompt": "reefs", "article": REPORT_A}, {"id": "b", "prompt": "energy", "article": REPORT_B}]
    with ScriptedOpenAI(scripted_support, faults=Faults(error_500=0.2, seed=1)) as server:
        judge = Judge.from_endpoint(server.base_url, "scripted-judge", max_attempts=2, backoff=0.01)
        result = asyncio.run(fact.run_fact(rows, fact.ToolsPages(tools), judge))
        prompts = [r["messages"][-1]["content"] for r in server.requests]
    # The judge saw the real corpus page text, fetched through the tools' crawl backend into synth's page cache.
    assert any("calcium carbonate" in p for p in prompts)
    cached = tools.cache.get("page", tools.crawl_backend.name, {"url": "https://en.wikipedia.org/wiki/Coral_reef"})
    assert cached is not None and "calcium carbonate" in cached["text"]
    a, b = result["reports"]
    assert (a["pairs"], a["supported"], a["unsupported"], a["unfetched"], a["dangling"]) == (5, 3, 1, 1, 1)
    assert (b["pairs"], b["supported"], b["judge_failed"]) == (2, 1, 1)
    s = result["summary"]
    # supported 4, unsupported 1 -> 80%; effective citations = 4 supported / 2 reports.
    assert s["citation_accuracy"] == pytest.approx(80.0)
    assert s["effective_citations"] == pytest.approx(2.0)
    assert (s["judge_failed"], s["unfetched"], s["dangling"]) == (1, 1, 1)
    assert judge.stats.failures == 1


def test_fact_cli(tmp_path, capsys):
    from scripted_openai import ScriptedOpenAI

    articles = tmp_path / "ours.jsonl"
    articles.write_text(json.dumps({"id": "a", "prompt": "reefs", "article": REPORT_A}) + "\n")
    with ScriptedOpenAI(scripted_support) as server:
        rc = fact.main(["--articles", str(articles), "--judge-url", server.base_url, "--judge-model", "scripted",
                        "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "fact.json")])
    assert rc == 0
    s = json.loads((tmp_path / "fact.json").read_text())["summary"]
    assert s["citation_accuracy"] == pytest.approx(75.0) and s["effective_citations"] == pytest.approx(3.0)
    assert "citation accuracy 75.00%; effective citations 3.00" in capsys.readouterr().out
