"""Agentic GRPO: `python -m oresearcher.train --config=configs/rl.py[:preset]` (dispatched here by config.stage).

One step, read top to bottom in `run`:
    questions (Q per step, cycled)  ->  rollout: G episodes each, tools over HTTP       (time/generate, time/tools)
    ->  rewards: R_format, R_tool locally, R_base from the synth judge                     (time/judge)
    ->  group-normalised advantages; abstained episodes and zero-variance groups dropped
    ->  `grpo.epochs` x `grpo.minibatches` optimizer steps against the rollout logprobs   (time/train)
    ->  metrics.jsonl + console line; every episode (text, reward parts, advantage) to episodes.jsonl;
        checkpoint every `checkpoint_every` steps and on SIGTERM.

The synth service (tools + judge) is `config.synth_url`, or a `python -m synth serve` subprocess started on a
free loopback port and stopped at the end. The policy starts from `config.init_checkpoint` (an SFT result), or,
when `warm_start.enabled` and none is given, from a short SFT on trajectories of the embedded synthesizer
(rl/warm_start.py).

Multi-host (several processes, one JAX program: oresearcher/train.py): every host runs the rollouts of its
contiguous share of a step's questions on its own devices (a copy of the policy, refreshed after each update:
oresearcher.multihost.host_model), makes their tool and judge calls to the one synth service (process 0's, or
`synth_url`), and the hosts then exchange their scored episodes, so every host holds the whole step: the same
advantages, the same batch (each places its own shards of it) and the same update. Only process 0 writes
metrics.jsonl, episodes.jsonl and TensorBoard events. `rollout.seed_per_group` seeds every group's sampling by
its index in the step (one rollout per group), so that a step's episodes do not depend on how many hosts share it.

Asynchronous (`max_staleness` >= 1): while step s trains, a rollout thread already samples step s + 1 on a copy of
the policy as it was before update s (placement.py: arrays the update never touches), so tool, judge and
generation time overlap the update and every trained token is at most one policy version old (`staleness` in the
metrics; `time/wait_rollout` is what the trainer still waited for). The copy costs one more set of parameters on
the rollout devices. With `grpo.behaviour_cap` the update corrects for the age (grpo.py's decoupled objective).
max_staleness = 0 is the synchronous loop: rollout, then update. `placement` = "split" runs the rollouts on
devices of their own (`rollout_devices`), the trainer on the rest (placement.py).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from oresearcher import checkpoint as checkpoint_lib
from oresearcher import metrics as metrics_lib
from oresearcher import multihost, optim, paths
from oresearcher.preemption import PreemptionGuard, check_finite
from oresearcher.rl import grpo, placement
from oresearcher.rl import rewards as rewards_lib
from oresearcher.rl.rollout import RolloutConfig, make_generator, rollout, to_batch
from oresearcher.rl.synth_service import shared_synth_service


def make_optimizer(model, config):
    """The SFT trainer's AdamW (oresearcher.optim) over the policy's parameters; its schedule counts optimizer
    steps: total_steps x grpo.epochs x grpo.minibatches."""
    updates = int(config.total_steps) * int(config.grpo.epochs) * int(config.grpo.minibatches)
    tx, _ = optim.make_optimizer(config.optim, updates)
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def _train_state(model, optimizer) -> dict:
    """What a checkpoint holds: the policy's parameters and the optimizer state, as plain nested dicts."""
    return {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
            "optimizer": nnx.to_pure_dict(nnx.state(optimizer))}


def _restore(ckpt, model, optimizer) -> tuple[int, dict]:
    resumed = ckpt.restore_latest(checkpoint_lib.abstract_like(_train_state(model, optimizer)),
                                  log=lambda line: print(f"rl: {line}", flush=True))
    if resumed is None:
        return 0, {}
    step, state, data_state = resumed
    for obj, key in ((model, "params"), (optimizer, "optimizer")):
        target = nnx.state(obj, nnx.Param) if key == "params" else nnx.state(obj)
        nnx.replace_by_pure_dict(target, state[key])
        nnx.update(obj, target)
    print(f"rl: resumed from {ckpt.directory}/{step}", flush=True)
    return step, data_state


# ------------------------------------------------------------------------------------------------ inputs
def load_questions(path: str) -> list[str]:
    """Questions from JSONL ({"question": ...} per line) or plain text (one per line)."""
    p = paths.path(path)
    if not paths.is_cloud(path) and not p.exists() and not p.is_absolute():
        p = Path(__file__).resolve().parents[2] / path      # configs/... relative to the repository
    if not p.exists():
        raise FileNotFoundError(f"rl questions file {path} does not exist; set --config.questions=FILE "
                                f"(JSONL with a 'question' field, or one question per line)")
    out = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            rec = json.loads(line)
            if "question" not in rec:
                raise ValueError(f"{path} line {i}: missing 'question'")
            out.append(str(rec["question"]))
        else:
            out.append(line)
    if not out:
        raise ValueError(f"{path}: no questions")
    return out


def load_policy(config, mesh, workdir: Path):
    """(model, tokenizer) for config.model / config.init_checkpoint, sharded on `mesh`."""
    from oresearcher.rl.warm_start import policy_from_config
    return policy_from_config(config, mesh, workdir)


# -------------------------------------------------------------------------------------------------- run
def run(config) -> dict:
    """GRPO per `config` (configs/rl.py); returns the last step's metrics. On SIGTERM: checkpoint, return."""
    workdir = paths.path(config.workdir)   # a local directory or a cloud URL (gs://bucket/run)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    guard = PreemptionGuard()

    # ---------------------------------------------------------------- Set up mesh and the pieces
    place = placement.make(config)     # the trainer's mesh, and where the rollouts run
    mesh = place.mesh
    rcfg = RolloutConfig.from_config(config.rollout)
    wcfg = rewards_lib.RewardConfig.from_config(config.reward)
    gcfg = grpo.GRPOConfig.from_config(config)
    advantage = grpo.get_advantage_estimator(config.grpo.advantage)
    questions = load_questions(config.questions)
    if int(config.get("num_questions", 0)) > 0:
        questions = questions[:int(config.num_questions)]
    total_steps = int(config.total_steps)
    rollouts = f"; rollouts on {place.rollout_mesh.size} more (split)" if place.kind == "split" else ""
    print(f"rl: mesh {dict(mesh.shape)} on {mesh.size} {jax.devices()[0].platform} device(s){rollouts}; "
          f"{len(questions)} questions, {config.questions_per_step} per step x group {rcfg.group_size}", flush=True)

    last = {}
    # The synth service (tools + judge) lives for the whole run; a subprocess is stopped on the way out.
    with shared_synth_service(config) as synth_url, jax.set_mesh(mesh):
        model, tokenizer = load_policy(config, mesh, workdir)
        if jax.process_index() == 0:
            print(metrics_lib.parameter_overview(model), flush=True)
        ref_model = load_policy(config, mesh, workdir)[0] if gcfg.kl_beta else None   # the frozen start
        optimizer = make_optimizer(model, config)
        # this host's share of the rollouts runs where the placement says, on the policy itself or on a copy the
        # update never touches (asynchronous, split), refreshed between rollouts
        staleness = int(config.get("max_staleness", 0))
        rollout_mesh = place.rollout_mesh
        rollout_model = place.rollout_model(model)
        per_group = bool(config.rollout.get("seed_per_group", False))
        hosts = jax.process_count()
        groups_per_run = 1 if per_group else -(-int(config.questions_per_step) // hosts)
        with jax.set_mesh(rollout_mesh):      # its arrays live where the rollouts run
            sampler = make_generator(rollout_model, tokenizer, config.rollout, groups_per_run * rcfg.group_size)
        # the mesh its programs run on: the inference layout's own (engine/layout.py) on several devices
        generator_mesh = getattr(sampler.placed, "mesh", None) or rollout_mesh

        # ---------------------------------------------------------------- Checkpointing
        ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints", keep=int(config.keep_checkpoints))
        start, data_state = _restore(ckpt, model, optimizer)
        if multihost.is_primary():
            _keep_episodes_until(workdir / "episodes.jsonl", start)
        writer = metrics_lib.MetricsWriter(workdir, total_steps, start_step=start, progress=False)
        profiler = metrics_lib.StepProfiler(workdir, config.get("profile"))
        print(f"rl: synth service at {synth_url}; workdir {workdir}", flush=True)

        # ---------------------------------------------------------------- RL loop
        order = np.random.default_rng(int(config.seed)).permutation(len(questions))
        q = int(config.questions_per_step)
        # the question queue: a cursor into the shuffled order, saved with every checkpoint (dynamic sampling
        # draws a varying number of questions per step); step s starts at s * q when nothing was redrawn
        cursor = [int(data_state.get("cursor", (start + 1) * q))]

        def next_questions(n: int) -> list[str]:
            picks = [questions[order[(cursor[0] + i) % len(order)]] for i in range(n)]
            cursor[0] += n
            return picks

        updater = grpo.Updater(model, optimizer, gcfg, mesh)

        def sample_step(step: int) -> dict:
            """The step's rollouts, scored, with advantages (dynamic sampling may redraw groups): on the main
            thread (synchronous), or on the rollout thread while the previous step trains (asynchronous)."""
            timings = {"time/generate": 0.0, "time/tools": 0.0, "time/judge": 0.0}

            def sample(picks: list[str], round_: int):
                # rollout of this host's share of the groups: G episodes per question, tools over HTTP;
                # rewards: R_format, R_tool here, R_base from the judge; then every host's scored episodes on
                # every host, and advantages per group
                base = int(config.seed) * 100003 + step + 1000003 * round_
                mine = multihost.process_share(len(picks))
                if per_group:   # seeded by the group's index in the step: the same on any number of hosts
                    runs = [([i], (base * 1009 + i) % 2 ** 31) for i in mine]
                else:
                    runs = [(list(mine), (base + 15485863 * jax.process_index()) % 2 ** 31)] if mine else []
                local, local_timings = [], {}
                for groups, seed in runs:
                    with jax.set_mesh(generator_mesh):   # this host's devices
                        eps, t = rollout(sampler, tokenizer, [picks[i] for i in groups], synth_url, rcfg,
                                         seed=seed)
                    for e in eps:
                        e.group = groups[e.group]        # the group's index among the step's picks
                    local += eps
                    for k, v in t.items():      # a share: the mean over this host's runs
                        local_timings[k] = local_timings.get(k, 0.0) + (v / len(runs) if "occupancy" in k else v)
                t0 = time.perf_counter()
                local_scored = (asyncio.run(rewards_lib.score_all(synth_url, [e.question for e in local],
                                                                  [e.response for e in local], wcfg))
                                if local else [])
                local_timings["time/judge"] = time.perf_counter() - t0
                episodes, scored, slowest = [], [], {}
                for eps, sc, t in multihost.gather_objects((local, local_scored, local_timings), channel="rollout"):
                    episodes, scored = episodes + eps, scored + sc
                    for k, v in t.items():      # the slowest host's
                        slowest[k] = max(slowest.get(k, 0.0), v)
                for k, v in slowest.items():
                    timings[k] = timings.get(k, 0.0) + v
                n = len(picks)
                totals = np.array([r.total if r.total is not None else 0.0 for r in scored]).reshape(n, -1)
                valid = np.array([not r.abstained for r in scored]).reshape(n, -1)
                adv, keep = advantage(totals, valid)
                return episodes, scored, adv, keep

            t0 = time.perf_counter()
            rounds = int(config.grpo.get("dynamic_sampling_rounds", 0))
            drawn = sample_informative_groups(sample, next_questions, q, rounds)
            timings["time/rollout"] = time.perf_counter() - t0
            return {"drawn": drawn, "timings": timings, "cursor": cursor[0]}

        # asynchronous (max_staleness >= 1): step s + 1's rollout runs on a thread of its own while step s
        # trains, on the policy as it was before update s, so its episodes are one policy version old when trained
        ahead = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="oresearcher-rollout")
                 if staleness else None)
        pending: dict[int, concurrent.futures.Future] = {}
        consumed = cursor[0]        # the question cursor as of the last step trained (what a checkpoint saves)
        try:
            for step in range(start + 1, total_steps + 1):
                if guard.should_stop():
                    ckpt.save(step - 1, _train_state(model, optimizer), {"step": step - 1, "cursor": consumed},
                              wait=True)
                    print(f"rl: {guard.signal_name} at step {step - 1}: checkpoint saved, exiting", flush=True)
                    return last
                t_step = time.perf_counter()
                profiler.before(step)       # the trace covers the whole step: rollout, judge and update
                t0 = time.perf_counter()
                if step in pending:
                    sampled = pending.pop(step).result()
                    stale = 1
                else:
                    place.refresh(rollout_model, model)
                    sampled = sample_step(step)
                    stale = 0
                waited = time.perf_counter() - t0
                consumed = sampled["cursor"]
                if ahead is not None and step < total_steps:
                    # the rollout thread is idle: bring its copy to this policy version (a step sampled here
                    # already ran on it), then start the next step's rollout
                    if stale:
                        place.refresh(rollout_model, model)
                    pending[step + 1] = ahead.submit(sample_step, step + 1)
                episodes, scored, adv, keep, train_groups, rounds = sampled["drawn"]
                timings = dict(sampled["timings"], **{"time/wait_rollout": waited})
                # update: several optimizer steps against the rollout logprobs, on `q` informative groups
                t0 = time.perf_counter()
                g = rcfg.group_size
                rows = [i * g + j for i in train_groups for j in range(g)]
                train_metrics = _update(updater, model, optimizer, ref_model, [episodes[i] for i in rows],
                                        adv.reshape(-1)[rows], keep.reshape(-1)[rows], gcfg, config, mesh,
                                        np.random.default_rng(int(config.seed) + step))
                timings["time/train"] = time.perf_counter() - t0
                profiler.after(step, nnx.state(model, nnx.Param))
                if jax.process_index() == 0:
                    _log_episodes(workdir / "episodes.jsonl", step, episodes, scored, adv.reshape(-1),
                                  keep.reshape(-1))
                check_finite(step, {k.removeprefix("train/"): v for k, v in train_metrics.items()})
                last = _step_metrics(step, episodes, scored, keep, timings, train_metrics)
                last.update({"groups/sampled": int(keep.shape[0]), "groups/informative": len(train_groups),
                             "groups/rounds": rounds, "staleness": stale})
                last["time/step"] = time.perf_counter() - t_step
                if step % int(config.log_every) == 0 or step == total_steps:
                    writer.write(step, last)
                    print(_console(last), flush=True)
                if step % int(config.checkpoint_every) == 0 or step == total_steps:
                    ckpt.save(step, _train_state(model, optimizer), {"step": step, "cursor": consumed})
        finally:
            if ahead is not None:       # a rollout still running ends first (its episodes are not kept)
                ahead.shutdown(wait=True, cancel_futures=True)
            profiler.stop()
            writer.close()
            ckpt.close()
            guard.restore_handlers()
        if config.get("export_dir"):
            from oresearcher.export import write_hf
            export = paths.under(workdir, config.export_dir)
            write_hf(model, tokenizer, export, log_prefix="rl")
            if jax.process_index() == 0:
                print(_next_commands(config, export), flush=True)
    return last


def _next_commands(config, export: str) -> str:
    """What to run next: serve the exported policy, then evaluate it on questions it never trained on. The server
    gets 4 slots, run_agent's 4 questions at a time: the engine decodes every slot at each step, in use or not."""
    out, r = paths.under(config.workdir, "eval_heldout"), config.rollout
    return (f"rl: the policy is in {export}. Serve it, then run it on the held-out questions "
            f"(experiments/data/embedded_eval.jsonl, none of which it trained on):\n"
            f"  python -m oresearcher.serve --checkpoint={export} --name policy --port 8000 --slots 4\n"
            f"  python -m experiments.run_agent --endpoint http://127.0.0.1:8000/v1 --model policy "
            f"--api completions --tokenizer {export} --tools local "
            f"--questions experiments/data/embedded_eval.jsonl --out {out} --max-turns {r.max_turns + 1} "
            f"--max-tokens-per-turn {r.max_turn_tokens} --max-total-tokens {r.max_tokens} "
            f"--max-observation-tokens {r.max_observation_tokens}\n"
            f"or, faster (the same questions and scores, the policies in process, with the teacher's and the SFT "
            f"policy's rows beside it):\n"
            f"  python -m experiments.eval.embedded --rl {config.workdir} --sft {config.workdir} "
            f"--systems teacher,sft,rl")


def sample_informative_groups(sample, next_questions, want: int, max_rounds: int):
    """Dynamic sampling: groups whose rewards do not vary teach nothing (every advantage is 0), so they are
    replaced by groups of further questions from the queue until `want` groups are informative or `max_rounds`
    redraws were made (0 = no redraw: today's loop, which trains on what is left).

    sample(questions, round) -> (episodes, scored, advantages [n, G], keep [n, G]); next_questions(n) -> the next
    n questions of the queue. Returns every sampled group (episodes, scored, advantages, keep concatenated in
    order), the indices of the groups to train on (the first `want` informative ones) and the redraws made."""
    episodes, scored, adv, keep = sample(next_questions(want), 0)
    rounds = 0
    while rounds < max_rounds and int(keep.any(axis=1).sum()) < want:
        rounds += 1
        more = sample(next_questions(want - int(keep.any(axis=1).sum())), rounds)
        for e in more[0]:
            e.group += len(adv)         # groups numbered across the step's rounds (episodes.jsonl)
        episodes, scored = episodes + more[0], scored + more[1]
        adv, keep = np.concatenate([adv, more[2]]), np.concatenate([keep, more[3]])
    informative = [int(i) for i in np.nonzero(keep.any(axis=1))[0][:want]]
    return episodes, scored, adv, keep, informative, rounds


def _update(updater, model, optimizer, ref_model, episodes, adv, keep, gcfg, config, mesh, rng) -> dict:
    """`grpo.epochs` passes over the kept episodes in `grpo.minibatches` optimizer steps each, every step against
    the rollout's logprobs. Minibatches have a fixed row count (questions_per_step x group / minibatches, padded
    with empty rows) so the update compiles once per length bucket; each is one optimizer step, its gradient
    accumulated over microbatches of at most grpo.microbatch_tokens tokens. With grpo.behaviour_cap, every
    minibatch first gets the policy's own logprobs before the first of these steps (the decoupled objective's
    proximal policy, grpo.py). {} when every group was dropped."""
    kept = [i for i in range(len(episodes)) if keep[i]]
    if not kept:
        return {}
    minibatches = max(1, int(config.grpo.minibatches))
    rows = -(-int(config.questions_per_step) * int(config.rollout.group_size) // minibatches)
    batches = []
    for _ in range(int(config.grpo.epochs)):
        order = rng.permutation(kept)
        for start in range(0, len(order), rows):
            part = sorted(order[start:start + rows])
            batch = to_batch([episodes[i] for i in part], adv[part], int(config.grpo.length_multiple), rows)
            batch = grpo.place_batch(batch, mesh)
            if ref_model is not None:
                batch["ref_logp"] = grpo.reference_logprobs(ref_model, batch, gcfg.temperature, gcfg.logprob_chunk)
            if gcfg.behaviour_cap > 0:
                batch["prox_logp"] = grpo.reference_logprobs(model, batch, gcfg.temperature, gcfg.logprob_chunk)
            batches.append(batch)
    out: dict[str, list] = {}
    for batch in batches:
        metrics = updater(model, optimizer, batch)
        for k, v in jax.device_get(metrics).items():
            out.setdefault(k, []).append(float(v))
    result = {f"train/{k}": float(np.mean(v)) for k, v in out.items() if k != "policy_tokens"}
    result["train/optimizer_steps"] = len(out.get("loss", []))
    return result


def _keep_episodes_until(path, step: int) -> None:
    """On resume from checkpoint `step`, drop the episodes logged after it (those steps run again)."""
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        path.write_text("".join(x for x in lines if json.loads(x)["step"] <= step), encoding="utf-8")


def _log_episodes(path, step, episodes, scored, adv, keep) -> None:
    """Append this step's episodes: what the policy wrote and how it was scored (for reading samples)."""
    lines = [json.dumps({"step": step, "group": e.group, "question": e.question, "response": e.response,
                         "finish": e.finish, "reward": r.total, "reward/base": r.base, "reward/tool": r.tool,
                         "reward/format": r.format, "abstained": r.abstained, "judge": r.judge,
                         "advantage": float(a), "kept": bool(k), "tool_calls": [c.tool for c in e.tool_calls]},
                        ensure_ascii=False) + "\n" for e, r, a, k in zip(episodes, scored, adv, keep)]
    paths.append_text(path, "".join(lines))


def _step_metrics(step, episodes, scored, keep, timings, train_metrics) -> dict:
    judged = [r for r in scored if not r.abstained]

    def mean(xs):
        return float(np.mean(xs)) if len(xs) else float("nan")

    calls = [len(e.tool_calls) for e in episodes]
    record = {
        "step": step,
        "reward": mean([r.total for r in judged]),
        "reward/base": mean([r.base for r in judged]),
        "reward/tool": mean([r.tool for r in scored]),
        "reward/format": mean([r.format for r in scored]),
        "judge/abstained": int(sum(r.abstained for r in scored)),
        "tool_calls": mean(calls),
        "tool_calls/web_search": mean([sum(c.tool == "web_search" for c in e.tool_calls) for e in episodes]),
        "tool_calls/crawl_page": mean([sum(c.tool == "crawl_page" for c in e.tool_calls) for e in episodes]),
        "tool_calls/failed": int(sum(not c.ok for e in episodes for c in e.tool_calls)),
        "response_tokens": mean([e.response_tokens for e in episodes]),
        "policy_tokens": mean([e.policy_tokens for e in episodes]),
        "episodes": len(episodes),
        "episodes/kept": int(np.sum(keep)),
        "groups/dropped_zero_variance": int(np.sum(~keep.any(axis=1))),
        **{f"finish/{k}": sum(e.finish == k for e in episodes) for k in sorted({e.finish for e in episodes})},
        **timings,
        **train_metrics,
    }
    record["tokens_per_sec"] = sum(e.policy_tokens for e in episodes) / max(timings["time/generate"], 1e-9)
    return record


def _entropy_part(r: dict) -> str:
    """The policy's entropy over the trained tokens, or why there is none (no group had reward variance)."""
    return f"entropy {r['train/entropy']:.3f}" if "train/entropy" in r else "no update (no informative group)"


def _console(r: dict) -> str:
    return (f"step {r['step']:>4} | reward {r['reward']:.3f} (base {r['reward/base']:.3f} tool {r['reward/tool']:+.3f} "
            f"format {r['reward/format']:.2f}) abstained {r['judge/abstained']} | tool calls {r['tool_calls']:.1f} | "
            f"response tokens {r['response_tokens']:.0f} | kept {r['episodes/kept']}/{r['episodes']} "
            f"(informative groups {r['groups/informative']}/{r['groups/sampled']}) | "
            f"{_entropy_part(r)} | "
            f"generate {r['time/generate']:.1f}s tools {r['time/tools']:.1f}s judge {r['time/judge']:.1f}s "
            f"train {r['time/train']:.1f}s")
