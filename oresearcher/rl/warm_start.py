"""The RL starting policy: a given SFT result, or a short SFT warm start on embedded-synthesizer trajectories.

    model, tokenizer = policy_from_config(config, mesh, workdir)

config.model: "gguf:embedded" (SmolLM2-135M-Instruct), a preset name of oresearcher.model.PRESETS (random init,
with `model_overrides`, tokenizer from config.tokenizer), or an HF-layout directory. config.init_checkpoint: an
HF-layout directory whose weights replace the initial ones (the SFT export).

Warm start (when there is no init_checkpoint and warm_start.enabled): the RL questions' first
`warm_start.num_questions` go through `python -m synth run` (the embedded synthesizer: extractive teacher, local
corpus, heuristic judge); the accepted trajectories are *abridged* (every span body cut to its first
`abridge_sentences` sentences, only the first `max_subtasks` subtasks kept, the protocol structure intact) so
that sequences stay short enough for a CPU budget; then `warm_start.steps` steps of the SFT trainer itself
(`oresearcher.sft.run`, configs/sft.py's smollm2 preset re-pointed at these records and this run's model and mesh;
its loss mask trains only assistant-authored tokens, observations masked). The SFT result is exported to
workdir/warm_start/policy (HF layout) and reused when the run resumes.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from flax import nnx

from oresearcher import protocol

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ policy
def _load_weights(model, directory: str, mesh, rules):
    from oresearcher import paths
    from oresearcher.model import load_hf
    loaded = load_hf(paths.local_copy(directory), mesh=mesh, rules=rules)   # gs:// is copied to the host once
    nnx.update(model, nnx.state(loaded, nnx.Param))
    return model


def policy_from_config(config, mesh, workdir: Path):
    """(model, tokenizer), sharded on `mesh`: config.model (built as the SFT trainer builds it), then the weights
    of config.init_checkpoint, or of the warm start (run here once, reused on resume)."""
    from oresearcher import sft as sft_lib

    rules = None if config.rules is None else tuple(tuple(r) for r in config.rules)
    model, tokenizer = sft_lib.build_model(config, mesh, rules)
    if config.init_checkpoint:
        return _load_weights(model, str(config.init_checkpoint), mesh, rules), tokenizer
    if not config.warm_start.enabled:
        return model, tokenizer
    from oresearcher import multihost

    out = workdir / "warm_start" / "policy"
    data = workdir / "warm_start" / "abridged.jsonl"
    # multi-host: process 0 decides, synthesizes and writes the records; every process then runs the SFT (each
    # reads its share of the rows) and reads the export once process 0 has written it
    if not multihost.broadcast_object((out / "config.json").exists()):
        if multihost.is_primary():
            records = synthesize(config, workdir / "warm_start")
            # observations cut as the rollout cuts them: the policy learns to continue after what it will see
            from oresearcher.rl.rollout import truncate_observation
            limit = int(config.rollout.max_observation_tokens)
            cut = lambda body: truncate_observation(tokenizer, body, limit)
            with open(data, "w") as f:
                for rec in records:
                    f.write(json.dumps(abridge_record(rec, config.warm_start, cut)) + "\n")
        multihost.barrier("warm start: records written")
        sft_lib.run(_sft_config(config, data, workdir / "warm_start", out), devices=list(mesh.devices.flat))
        multihost.barrier("warm start: policy exported")
    else:
        print(f"warm start: reusing {out}", flush=True)
    return _load_weights(model, str(out), mesh, rules), tokenizer


def _sft_config(config, data: Path, directory: Path, export: Path):
    """configs/sft.py's smollm2 preset, pointed at the abridged trajectories and the RL run's model and mesh."""
    import importlib.util

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))      # configs/sft.py imports `configs.common`
    spec = importlib.util.spec_from_file_location("rl_warm_start_sft_config", REPO / "configs" / "sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    w = config.warm_start
    c = module.get_config("smollm2")
    c.workdir = str(directory / "sft")
    c.seed = int(config.seed)
    c.model, c.tokenizer = config.model, config.get("tokenizer", "") or c.tokenizer
    c.model_overrides = config.get("model_overrides") or c.model_overrides
    c.mesh, c.rules = dict(config.mesh), config.rules
    c.data.train, c.data.eval, c.data.eval_fraction = str(data), "", 0.0
    c.data.seq_len, c.data.batch_size = int(w.max_len), int(w.batch_size)
    c.total_steps, c.log_every = int(w.steps), max(1, int(w.steps) // 10)
    c.checkpoint_every, c.eval_every, c.progress = int(w.steps), 0, True
    c.optim.lr, c.optim.weight_decay, c.optim.warmup_fraction = float(w.lr), 0.0, 0.1
    c.export_dir = str(export)
    return c


# ------------------------------------------------------------------------------------------ trajectories
def synthesize(config, directory: Path) -> list[dict]:
    """Accepted trajectory records for the first warm_start.num_questions RL questions (synth run, resumable)."""
    from oresearcher.rl.train import load_questions

    directory.mkdir(parents=True, exist_ok=True)
    questions = load_questions(config.questions)[: int(config.warm_start.num_questions)]
    seeds = directory / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"warm-{i}", "question": q}) + "\n" for i, q in enumerate(questions)))
    synth_config = str(config.synth_config)
    path, _, preset = synth_config.partition(":")
    if Path(path).exists():
        synth_config = str(Path(path).absolute()) + (f":{preset}" if preset else "")
    cmd = [sys.executable, "-m", "synth", "run", f"--config={synth_config}", f"--seeds={seeds}",
           f"--out={directory / 'synth'}", *synth_overrides(config)]
    start = time.perf_counter()
    print(f"warm start: synthesizing {len(questions)} trajectories: {' '.join(cmd)}", flush=True)
    done = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"warm start: `{' '.join(cmd)}` failed with code {done.returncode}:\n{done.stderr[-3000:]}")
    path = directory / "synth" / "trajectories.jsonl"
    # in seed order, not the order the parallel synthesizer finished them: the warm start (and so the whole run)
    # is then the same on every run of the same config
    records = sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()),
                     key=lambda r: str(r.get("id", "")))
    if not records:
        raise RuntimeError(f"warm start: the synthesizer accepted no trajectory ({directory / 'synth'}); see its "
                           f"rejected.jsonl")
    print(f"warm start: {len(records)} trajectories in {time.perf_counter() - start:.0f}s", flush=True)
    return records


def synth_overrides(config) -> list[str]:
    """`--config.KEY=VALUE` for the warm start's `synth run`: the reward's tool-call band (the funnel keeps only
    trajectories whose N the reward pays for); with warm_start.synth_tokens > 0, the sizes under which the embedded
    teacher's trajectories fit that many tokens (`synth.config.sized_for`: give the SFT sequence length less the
    prompt's tokens); then warm_start.synth_overrides, a list of "KEY=VALUE" strings."""
    from synth.config import sized_for
    reward, w = config.get("reward") or {}, config.warm_start
    items = {f"workflow.{k}": reward[k] for k in ("tool_low", "tool_high") if k in reward}
    if int(w.get("synth_tokens", 0) or 0) > 0:
        items.update(sized_for(int(w.synth_tokens)))
    items.update(item.split("=", 1) for item in (w.get("synth_overrides") or []))
    return [f"--config.{key}={value}" for key, value in items.items()]


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _first_sentences(text: str, n: int) -> str:
    if n <= 0:
        return text.strip()
    parts = _SENTENCE.split(text.strip())
    return " ".join(parts[:n]).strip()


def _first_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n]) if n > 0 else text.strip()


def _short_call(tag: str, body: str, words: int) -> str:
    """A tool call cut to `words` words: the first query (or URL, with its goal cut), still a valid call."""
    call = protocol.parse_tool_call(tag, body)
    if isinstance(call, protocol.WebSearch):
        return f"query={_first_words(call.queries[0], words)}&num={call.num}"
    if isinstance(call, protocol.CrawlPage):
        goal = _first_words(call.goal, words)
        return f"url={call.urls[0]}" + (f"&goal={goal}" if goal else "")
    return body.strip()


_REFERENCES = re.compile(r"^#*\s*References\s*:?\s*$", re.MULTILINE)


def abridge_report(report: str, sentences: int, sections: int) -> str:
    """A report kept as a report: its title, its first `sections` sections and its last one (the conclusion),
    in each paragraph the first `sentences` sentences, and the reference entries the kept text cites (so every
    citation still names a source and every source is cited)."""
    head = _REFERENCES.split(report, maxsplit=1)[0]
    refs = {n: line for n, line in ((n, f"[{n}]. {url}" + (f" - {title}" if title else ""))
                                    for n, url, title in protocol.parse_references(report))}
    blocks = re.split(r"\n(?=## )", head.strip())
    if sections and len(blocks) > sections + 2:      # title + intro, the first sections, the last one
        blocks = blocks[:sections + 1] + blocks[-1:]
    kept = []
    for block in blocks:
        for paragraph in re.split(r"\n\s*\n", block.strip()):
            lines = paragraph.strip().splitlines()
            heading = [ln for ln in lines if ln.lstrip().startswith("#")]
            prose = " ".join(ln for ln in lines if not ln.lstrip().startswith("#")).strip()
            kept.append("\n".join(heading + ([_first_sentences(prose, sentences)] if prose else [])))
    body = "\n\n".join(k for k in kept if k)
    cited = [n for n in dict.fromkeys(protocol.cited_numbers(body)) if n in refs]
    return body + ("\n\nReferences\n" + "\n".join(refs[n] for n in sorted(cited)) if cited else "")


def abridge(text: str, sentences: int = 2, max_subtasks: int = 1, max_tool_calls: int = 2,
            max_references: int = 3, words: int = 0, observation=None, report_sentences: int = 0) -> str:
    """A shorter trajectory with the same protocol structure: the first `max_subtasks` subtasks (the subtask list
    cut to match), in each the steps up to its first `max_tool_calls` tool calls and their observations, every
    prose body cut to `sentences` sentences, observations to their first lines (each at most 160 characters),
    tool calls kept as written, the report's reference list cut to `max_references` entries.

    With `words` > 0 every prose body (and each subtask-list line) is cut to its first `words` words instead,
    tool calls to their first query or URL (the query and goal cut likewise) and observations to two lines: a
    whole episode is then a few hundred tokens, which a tiny model can learn in a few hundred SFT steps.
    `observation`, when given, maps each observation body to the one kept instead (the rollout's truncation).
    With `report_sentences` > 0 the final report is kept as a report instead (abridge_report: its sections for
    the kept subtasks and its conclusion, `report_sentences` sentences per paragraph, the cited references)."""
    cut = (lambda body: _first_words(body, words)) if words > 0 else (lambda body: _first_sentences(body, sentences))
    out, subtasks, calls, skipping = [], 0, 0, False
    for span in protocol.parse(text):
        tag = span.tag
        if tag is None:
            continue
        if tag == "subtask":
            subtasks, calls, skipping = subtasks + 1, 0, False
        if max_subtasks and subtasks > max_subtasks and tag != "suggested_answer":
            continue
        if tag in protocol.TOOL_TAGS:
            calls += 1
            skipping = bool(max_tool_calls) and calls > max_tool_calls
        if tag == "subtask_answer":
            skipping = False
        if skipping and tag in ("think", "plan", "observation", *protocol.TOOL_TAGS):
            continue
        body = span.body.strip()
        if tag == "subtask_list":
            items = [ln for ln in body.splitlines() if ln.strip()]
            items = items[:max_subtasks] if max_subtasks else items
            body = "\n".join("- " + _first_words(ln.strip().lstrip("-").strip(), words) if words > 0 else ln
                             for ln in items)
        elif tag == "observation" and observation is not None:
            body = observation(span.body.strip("\n"))     # the tool's text as protocol.observation wrapped it
        elif tag == "observation":
            lines = [ln[:160] for ln in body.splitlines() if ln.strip()]
            body = "\n".join(lines[: 2 if words > 0 else 2 + 2 * max(sentences, 1)])
        elif tag == "suggested_answer" and report_sentences > 0:
            body = abridge_report(body, report_sentences, max_subtasks)
        elif tag in ("suggested_answer", "subtask_answer"):
            head, sep, refs = body.partition("References")
            refs = "\n".join([ln for ln in refs.splitlines() if ln.strip() and ln.strip() != ":"][:max_references])
            body = cut(head) + (f"\n\n{sep}\n{refs}" if sep and refs else "")
        elif tag in protocol.TOOL_TAGS:
            body = _short_call(tag, body, words) if words > 0 else body
        elif tag == "subtask":
            body = _first_words(body, words) if words > 0 else body
        else:
            body = cut(body)
        if tag == "observation":
            out.append(protocol.observation(body).strip("\n"))
        elif "\n" in body or tag == "subtask_list":
            out.append(f"<{tag}>\n{body}\n</{tag}>")
        else:
            out.append(f"<{tag}>{body}</{tag}>")
    return "\n".join(out) + "\n"


def abridge_record(record: dict, cfg, observation=None) -> dict:
    """The record with its assistant turn abridged (see `abridge`); the rest unchanged."""
    record = json.loads(json.dumps(record))
    for m in record["messages"]:
        if m["role"] == "assistant":
            m["content"] = abridge(m["content"], int(cfg.abridge_sentences), int(cfg.max_subtasks),
                                   int(cfg.max_tool_calls), int(cfg.get("max_references", 3)),
                                   int(cfg.get("abridge_words", 0)), observation,
                                   int(cfg.get("report_sentences", 0)))
    record["report"] = protocol.extract_report(record["messages"][-1]["content"]) or record.get("report", "")
    return record
