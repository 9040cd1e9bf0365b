"""Evaluation: DeepResearch Bench RACE and FACT, DeepResearchGym-style KPR/KPC and citation precision/recall,
and the embedded offline evaluation set (30 questions over the embedded Wikipedia corpus).

    race.py            RACE over any OpenAI-compatible judge (benchmark criteria files, or judge-written criteria)
    fact.py            FACT: statement-URL pairs, pages through the synth crawl cache, judged support
    kpr.py             KPR/KPC and citation precision/recall (LLM judge, or the offline lexical stand-in)
    judge.py           the JSON-answering judge: retries, validation, failures counted (never scored 0)
    make_embedded.py   builds experiments/data/embedded_eval.jsonl from the corpus (deterministic)
    embedded.py        `python -m experiments.eval.embedded`: one table, teacher vs SmolLM2 base / SFT / RL
"""
