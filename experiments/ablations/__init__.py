"""Ablations from the paper, runnable on CPU on the embedded setup; each writes JSON and a PNG plot to
experiments/ablations/results/ (collected into experiments/RESULTS.md by `python -m experiments.results`).

    synthesis_mode.py   parallel researchers vs one sequential context (PAPER §2)
    step_budget.py      research steps per sub-query: 5 / 10 / 20 (PAPER §2)
    context_length.py   what a context window of L tokens keeps of the synthesized trajectories (PAPER §5)
"""
