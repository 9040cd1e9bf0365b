"""A protocol-aware trajectory viewer in the browser:

    python -m experiments.view PATH... [--port 8750] [--host 127.0.0.1]

PATH: a synth output directory (trajectories.jsonl, rejected.jsonl), an RL workdir (episodes.jsonl,
metrics.jsonl), a run_agent output directory, or a JSONL file of traces; several at once to compare teacher
and policy on the same question. `/` lists the records (filter by text and outcome), `/t/<key>` draws one trace
element by element with its citations linked to their URLs and observations, and an RL workdir's metrics are
plotted per step. Files are indexed lazily (experiments/view/jsonl.py), so a 100k-record file opens at once.
"""
