"""run_agent: a scripted OpenAI-compatible policy over real HTTP, real local tools, the protocol loop."""
import json
import socket

from oresearcher import protocol

REPORT = ("Coral reefs are underwater ecosystems built by reef-building corals [1].\n\n"
          "References\n[1]. https://en.wikipedia.org/wiki/Coral_reef - Coral reef")

TURNS = [
    "<subtask_list>\n- what coral reefs are\n</subtask_list>\n<subtask>what coral reefs are</subtask>\n"
    "<think>I need an encyclopedic source on coral reefs.</think>\n<plan>Search, then read the best page.</plan>\n"
    "<web_search>query=coral reef polyps calcium carbonate&num=3</web_search>",
    "<think>The Coral reef article is the one to read.</think>\n"
    "<crawl_page>url=https://en.wikipedia.org/wiki/Coral_reef</crawl_page>",
    "<subtask_answer>Coral reefs are built by corals [1].</subtask_answer>\n"
    "<suggested_answer>" + REPORT + "</suggested_answer>\nthis text is past the stop",
]


def scripted_policy(request):
    """Answers by turn: the number of assistant messages already in the conversation."""
    turn = sum(1 for m in request["messages"] if m["role"] == "assistant")
    return TURNS[min(turn, len(TURNS) - 1)]


def test_run_agent_writes_rows_trajectories_and_scores(tmp_path):
    from scripted_openai import ScriptedOpenAI

    from experiments import run_agent

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": 7, "topic": "Geography", "language": "en",
                                     "prompt": "What are coral reefs made of?",
                                     "key_points": ["Reefs are formed of colonies of coral polyps."]}) + "\n")
    out = tmp_path / "run"
    with ScriptedOpenAI(scripted_policy) as server:
        rc = run_agent.main(["--endpoint", server.base_url, "--model", "scripted-policy", "--questions",
                             str(questions), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                             "--judge", "none"])
        requests = server.requests
    assert rc == 0
    # three model turns; the 2nd and 3rd requests carry the real tool observations as user messages
    assert len(requests) == 3
    assert requests[0]["stop"] == list(protocol.STOP_STRINGS)
    assert "# Search Summary" in requests[1]["messages"][-1]["content"]
    assert "Coral_reef" in requests[1]["messages"][-1]["content"]
    assert "# Synthesis Report" in requests[2]["messages"][-1]["content"]

    rows = [json.loads(line) for line in (out / "output.jsonl").read_text().splitlines()]
    assert rows == [{"id": "7", "prompt": "What are coral reefs made of?", "article": REPORT}]
    traj = json.loads((out / "trajectories.jsonl").read_text())
    text = traj["messages"][2]["content"]
    assert traj["report"] == rows[0]["article"]
    assert text.endswith("</suggested_answer>") and "past the stop" not in text
    assert text.count("<observation>") == 2 and "</web_search>" in text and "</crawl_page>" in text
    assert traj["meta"]["tool_calls"] == {"web_search": 1, "crawl_page": 1}
    assert traj["meta"]["stop_reason"] == "answer"
    scores = json.loads((out / "scores.json").read_text())
    q = scores["questions"][0]
    assert q["r_format"] == protocol.format_reward(text) and q["tool_calls"] == {"web_search": 1, "crawl_page": 1}
    assert q["has_report"] and q["turns"] == 3


def test_policy_that_never_answers_stops_at_the_turn_limit(tmp_path):
    from scripted_openai import ScriptedOpenAI

    from experiments import run_agent

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "x", "prompt": "Loop forever?"}) + "\n")
    search = "<think>again</think><web_search>query=coral&num=2</web_search>"
    with ScriptedOpenAI([search]) as server:
        rc = run_agent.main(["--endpoint", server.base_url, "--model", "m", "--questions", str(questions),
                             "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
                             "--judge", "none", "--max-turns", "4"])
        assert len(server.requests) == 4
    assert rc == 0
    traj = json.loads((tmp_path / "run" / "trajectories.jsonl").read_text())
    assert traj["meta"]["stop_reason"] == "turn limit" and traj["report"] == ""
    assert json.loads((tmp_path / "run" / "output.jsonl").read_text())["article"] == ""


def _questions(tmp_path, n=2):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": f"Question {i}?"}) + "\n" for i in range(n)))
    return path


def test_failing_policy_endpoint_exits_non_zero(tmp_path, capsys):
    """An endpoint that refuses the model (404, as OpenAI and oresearcher.serve answer an unknown model name) and
    one where nothing listens: no report, exit status 1, the reason on stderr, the failures in the outputs."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from scripted_openai import LocalServer

    from experiments import run_agent

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def unknown_model(body: dict):
        return JSONResponse({"error": {"message": f"The model `{body['model']}` does not exist",
                                       "type": "invalid_request_error", "param": "model",
                                       "code": "model_not_found"}}, status_code=404)

    with LocalServer(app) as server:
        rc = run_agent.main(["--endpoint", server.url + "/v1", "--model", "nope", "--questions",
                             str(_questions(tmp_path)), "--out", str(tmp_path / "run"), "--judge", "none",
                             "--cache-dir", str(tmp_path / "cache")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "the policy endpoint failed for 2 of 2 questions" in err and "404" in err
    assert "no question produced a report because the policy endpoint failed; check --endpoint" in err
    traj = [json.loads(line) for line in (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()]
    assert all(t["meta"]["stop_reason"].startswith("policy error") for t in traj) and len(traj) == 2

    with socket.socket() as s:       # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    rc = run_agent.main(["--endpoint", dead, "--model", "m", "--questions", str(_questions(tmp_path, 1)),
                         "--out", str(tmp_path / "dead"), "--judge", "none", "--cache-dir", str(tmp_path / "cache"),
                         "--max-retries", "0"])
    assert rc == 1 and "no question produced a report" in capsys.readouterr().err


def test_some_answers_exit_zero(tmp_path, capsys):
    """A policy that answers: exit 0 and nothing on stderr about the endpoint."""
    from scripted_openai import ScriptedOpenAI

    from experiments import run_agent

    with ScriptedOpenAI(["<suggested_answer>" + REPORT + "</suggested_answer>"]) as server:
        rc = run_agent.main(["--endpoint", server.base_url, "--model", "m", "--questions",
                             str(_questions(tmp_path)), "--out", str(tmp_path / "run"), "--judge", "none",
                             "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0 and "policy endpoint failed" not in capsys.readouterr().err


def test_observations_are_cut_as_rollouts_cut_them(tmp_path):
    """--max-observation-tokens: the policy sees each observation as RL's rollout showed it (truncate_observation
    with the same tokenizer), not the tool's whole page."""
    from pathlib import Path

    from scripted_openai import ScriptedOpenAI

    from experiments import run_agent
    from oresearcher.model import Tokenizer
    from oresearcher.rl.rollout import truncate_observation

    tok_dir = Path(__file__).parent / "fixtures" / "tiny_tokenizer"
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": 1, "prompt": "What are coral reefs made of?"}) + "\n")
    with ScriptedOpenAI(scripted_policy) as server:
        rc = run_agent.main(["--endpoint", server.base_url, "--model", "m", "--questions", str(questions),
                             "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
                             "--judge", "none", "--tokenizer", str(tok_dir), "--max-observation-tokens", "48"])
    assert rc == 0
    traj = json.loads((tmp_path / "run" / "trajectories.jsonl").read_text())
    bodies = [p.body.strip("\n") for p in protocol.parse(traj["messages"][2]["content"]) if p.tag == "observation"]
    tok = Tokenizer.from_dir(tok_dir)
    assert len(bodies) == 2
    for body in bodies:      # each was cut: its first 24 tokens and the note, as the rollout writes it
        assert body.endswith("[... observation truncated ...]")
        assert truncate_observation(tok, body, 10_000) == body
        assert len(tok.encode(body)) < 48
