"""Agentic RL (PAPER §6): multi-turn tool-use rollouts, the composite AI-feedback reward, and GRPO.

    rollout.py      groups of G episodes per question; tools over HTTP; per-token masks and logprobs
    rewards.py      R = 0.6 R_base + 0.2 R_tool + 0.2 R_format; an abstaining judge masks the episode
    grpo.py         advantage estimators, policy losses and loss aggregations (small registries)
    train.py        `run(config)`: the loop behind `python -m oresearcher.train --config=configs/rl.py`
    warm_start.py   the starting policy (an SFT export, or a short SFT on embedded-synthesizer trajectories)
    synth_service.py  the synth service for tools and judge (given URL, or a loopback subprocess)
    filter.py       `python -m oresearcher.rl.filter`: the 8-sample difficulty filter for RL questions
"""
