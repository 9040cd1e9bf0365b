"""Agentic GRPO configs: `python -m oresearcher.train --config=configs/rl.py[:preset] [--config.key=value ...]`.

Presets (each says how to run it and what it should reach):

  smollm2 (default)   python -m oresearcher.train --config=configs/rl.py
      Embedded SmolLM2-135M-Instruct on a fresh CPU machine, no network, no keys. With no init_checkpoint it
      first synthesizes 16 trajectories with the embedded synthesizer (extractive teacher planning 3-4 subtasks
      within R_tool's band, local Wikipedia corpus), abridges them to ~1.5k tokens (thoughts and calls cut to 6
      words, observations cut as rollouts cut them, the report kept as a report: its sections, one sentence per
      paragraph, the references it cites), runs 20 SFT steps on them at lr 2e-4 (loss printed above a progress
      bar), then 2 GRPO steps of 1 question x group 4 (asynchronous: step 2's episodes are sampled while step 1
      trains) against the synth service started as a subprocess on a free loopback port (or `synth_url`), and
      exports the final policy to <workdir>/policy, printing the commands that serve it and evaluate it on the
      held-out questions. Every step prints the reward parts (base / tool / format), tool calls, response lengths
      and the time split (generate / tools / judge / train). Why these sizes: an episode of 3-4 subtasks x
      (search, read) is what R_tool pays for (N = 3-4 of its 2-8 band); 20 steps at 2e-4 reach the loss that 40
      at 1e-4 reached (1.20 -> 0.12-0.20 over the last steps, against 1.33 -> 0.11-0.19) in half the time.
      Measured on 2 cores shared with other jobs for its first 15 minutes (load 2-5): synthesis 3 s, the 20 SFT
      steps 20:45 (42-44 s per step once alone); a GRPO step on CPU takes longer than the SFT (generation of 4
      episodes of up to 2048 tokens and an update over them), so the whole job does not fit 30 minutes yet.
  smollm2-v5e8        python -m oresearcher.train --config=configs/rl.py:smollm2-v5e8   (on a TPU v5e-8 VM)
      The same job on 8 TPU chips, data parallel, bf16, 64 episodes per step, 100 steps (BUILD.md section 4).
      AOT: python -m oresearcher.aot --config=configs/rl.py:smollm2-v5e8 --target=tpu:v5e-8
  tiny                python -m oresearcher.train --config=configs/rl.py:tiny
      Tests: a 2-layer, 64-wide decoder with the 512-token test tokenizer (tests/fixtures/tiny_tokenizer), SFT'd
      for 200 steps on 4 embedded trajectories abridged to two words per body (one tool call, no references: the
      SFT nearly memorises them), then 20 GRPO steps of the same 4 questions x group 8, one optimizer step per
      rollout (exactly on-policy) at lr 2e-4. Target: the mean format reward of the last 5 steps above that of
      step 1, sampled before any update (tests/test_rl_train_tiny.py). Why these settings: the memorised policy
      is nearly deterministic, so groups of 4 rarely differ in format (zero-variance groups teach nothing);
      Adam's first steps move every weight by ~lr whatever its gradient, and at 1e-3 one step wrecks the
      memorised template (format 0.19 -> 0.00), while 5e-5 leaves it where it was. The warm-start records are
      sorted by seed, so a run is the same every time on one machine. Measured alone on 2 cores (7:43 wall):
      format 0.38 on step 1, 0.81 and 0.94 after one and two updates, then 0.59-0.88; last 5 steps 0.72. Most
      of the rise is in the first two updates; 20 steps do not lift the plateau (~0.7): the remaining failures
      are scattered sampling slips at temperature 1.0.
  qwen2.5-7b-gpu8     one 8xH100 host: FSDP over 8 GPUs, the paper's RL settings (group 8, lr 1e-6, no KL,
      clip 0.2/0.28, temperature 1.0, <= 25 turns, 0.6/0.2/0.2), 32k-token episodes. Set init_checkpoint to the
      SFT export and synth_url to a synth service with real tools and an LLM judge. Each of the 4 optimizer
      steps accumulates its gradient over microbatches of grpo.microbatch_tokens (one episode per GPU).
  qwen2.5-72b-v5p-128 a TPU v5p-128 slice (64 chips: fsdp 16 x sequence 4, ring attention), fp32 weights, bf16
      compute, full remat, 64k-token episodes, 64 questions x group 8 per step: the paper's 72B RL run.
  qwen2.5-72b-v5p-256 the same on a v5p-256 slice (128 chips: fsdp 32 x sequence 4).
  Every accelerator preset names its target (aot_target): `python -m oresearcher.aot --config=configs/rl.py:PRESET`
  compiles its update and the rollout engine's prefill and decode programs (inference layout, the cache of
  rollout.slots slots at rollout.max_tokens) for that target, and ends with `fits: yes|no (peak X GiB of Y GiB)`
  over what is resident at once (BUILD.md section 5).
"""
from pathlib import Path

from ml_collections import ConfigDict

from configs import common
from oresearcher import protocol

TINY_TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny_tokenizer"


def _base() -> ConfigDict:
    c = common.base_config()
    c.stage = "rl"
    c.workdir = "/tmp/oresearcher/rl"
    c.eval_every = 0                    # RL logs rewards every step; there is no separate eval loss
    c.total_steps = 20
    c.log_every = 1
    c.checkpoint_every = 10
    c.keep_checkpoints = 2
    c.model = "gguf:embedded"           # preset name, HF directory, or gguf:embedded
    c.attention = "flash"               # the update's attention: blockwise, no [T, T] score matrices ("" = the
                                        # model's own, dense); the sampler's cached attention is always dense
    c.tokenizer = ""                    # for a preset model: "gguf:embedded" or an HF directory
    c.model_overrides = common.model_overrides()  # any ModelConfig field, replaced on a preset model
    c.init_checkpoint = ""              # an SFT result: HF directory (save_hf export) or SFT workdir
    c.export_dir = "policy"             # the final policy in HF layout (save_hf); relative: inside the workdir
    c.aot_target = ""                   # the accelerator an accelerator preset is sized for: `python -m
                                        # oresearcher.aot --config=configs/rl.py:PRESET` compiles for it

    c.synth_url = ""                    # empty: start `python -m synth serve` on loopback for the run
    c.synth_config = "configs/synth.py"
    c.synth_start_timeout_s = 600
    c.questions = "configs/rl_questions.jsonl"   # JSONL {"question": ...} or one question per line
    c.num_questions = 0                 # > 0: train on the first this many questions only
    c.questions_per_step = 2
    c.max_staleness = 1                 # policy versions a trained token may lag: 1 = step s + 1's rollout runs
                                        # while step s trains (tool, judge and generation time overlap the
                                        # update; the rollout holds its own copy of the parameters); 0 = the
                                        # synchronous loop (rollout, then update). Higher values act as 1.
    c.placement = "colocated"           # "colocated": rollouts and updates share config.mesh's devices;
                                        # "split": the last rollout_devices devices run the rollouts, the mesh
                                        # is laid over the others (one host; oresearcher/rl/placement.py)
    c.rollout_devices = 0

    c.warm_start = ConfigDict()         # short SFT when no init_checkpoint is given
    c.warm_start.enabled = True
    c.warm_start.num_questions = 8      # seed questions synthesized by the embedded synthesizer
    c.warm_start.steps = 40
    c.warm_start.batch_size = 4
    c.warm_start.lr = 1e-4
    c.warm_start.max_len = 1024
    c.warm_start.abridge_sentences = 2  # keep this many sentences of every span body (0 = keep whole text)
    c.warm_start.abridge_words = 0      # > 0: cut every span body to this many words instead (tiny models)
    c.warm_start.max_references = 3     # keep this many reference lines in each answer
    c.warm_start.max_subtasks = 1       # keep this many subtasks of each trajectory (0 = all)
    c.warm_start.max_tool_calls = 2     # keep this many tool calls (with observations) per subtask (0 = all)
    c.warm_start.report_sentences = 0   # > 0: keep the final report as a report (its sections for the kept
                                        # subtasks and its conclusion, this many sentences per paragraph)
    c.warm_start.synth_tokens = 0       # > 0: the embedded teacher sized to trajectories of about this many tokens
    c.warm_start.synth_overrides = []   # further "KEY=VALUE" overrides of the warm start's synth config

    c.rollout = ConfigDict()
    c.rollout.group_size = 8
    c.rollout.max_turns = 25
    c.rollout.max_tokens = 8192
    c.rollout.max_turn_tokens = 2048
    c.rollout.max_observation_tokens = 1024
    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    c.rollout.top_k = 0
    c.rollout.tool_timeout_s = 60.0
    c.rollout.prefill_chunk = 512
    c.rollout.backend = "engine"        # "engine": continuous batching (oresearcher.engine); "lockstep": Sampler
    c.rollout.slots = 0                 # engine slots; 0 = one per episode of a step (questions_per_step x G)
    c.rollout.chunk = 16                # tokens per engine decode call (a parked call waits at most this long)
    c.rollout.tensor = 0                # engine on a mesh: tensor-parallel devices of its weight copy (0 = the
                                        # most that divide the heads; oresearcher/engine/layout.py)
    c.rollout.seed_per_group = False    # True: each group sampled in its own rollout, seeded by its index in the
                                        # step: the episodes then do not depend on how many hosts share a step
                                        # (multi-host runs equal one-host runs); False: a host's groups batched
                                        # together

    c.reward = ConfigDict()
    c.reward.w_base = 0.6
    c.reward.w_tool = 0.2
    c.reward.w_format = 0.2
    c.reward.tool_low = protocol.TOOL_LOW           # R_tool's band: N = min(#web_search, #crawl_page) distinct
    c.reward.tool_high = protocol.TOOL_HIGH         # calls; the warm start's synthesizer keeps only trajectories
    c.reward.tool_over_penalty = protocol.TOOL_OVER_PENALTY   # within it (workflow.rules="band")
    c.reward.normalize = "unit"
    c.reward.judge_timeout_s = 120.0

    c.grpo = ConfigDict()
    c.grpo.advantage = "grpo"           # grpo | dr_grpo | rloo
    c.grpo.policy_loss = "grpo"
    c.grpo.aggregation = "token-mean"   # token-mean | sequence-mean-token-mean | sequence-mean-token-sum
    c.grpo.clip_low = 0.2
    c.grpo.clip_high = 0.28
    c.grpo.kl_beta = 0.0                # > 0 adds beta * k3 KL to the initial policy
    c.grpo.epochs = 1
    c.grpo.minibatches = 2              # optimizer steps per epoch over one rollout batch
    c.grpo.behaviour_cap = 0.0          # > 0: the decoupled objective (grpo.py): the ratio against the trainer's
                                        # own logprobs before the update (one more forward per minibatch), each
                                        # token weighted by min(pi_trainer / pi_engine, cap), for stale episodes
                                        # and the engine's numerics; 0: the ratio against the engine's logprobs
    c.grpo.microbatch_tokens = 0        # > 0: each optimizer step accumulates gradients over microbatches of at
                                        # most this many tokens (rows x padded length; whole rows per device), so
                                        # memory is set by this, not by minibatches (0 = the whole minibatch)
    c.grpo.loss_normalizer = 0          # sequence-mean-token-sum's fixed tokens per episode (0 = max_tokens)
    c.grpo.dynamic_sampling_rounds = 3  # redraws of questions for zero-variance groups, so each update has
                                        # questions_per_step informative groups (0 = train on what is left)
    c.grpo.length_multiple = 128
    c.grpo.logprob_chunk = 512

    c.optim = ConfigDict()              # oresearcher.optim (the SFT trainer's AdamW); constant lr after warmup
    c.optim.lr = 1e-6
    c.optim.warmup_fraction = 0.0
    c.optim.warmup_steps = 0
    c.optim.final_lr_fraction = 1.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    return c


def smollm2() -> ConfigDict:
    c = _base()
    c.remat = "full"                    # GRPO's backward over 8 x 1024 tokens: ~15 GB of activations without it
    c.total_steps = 2
    c.checkpoint_every = 2
    c.questions_per_step = 1
    c.warm_start.num_questions = 16
    c.warm_start.steps = 20
    c.warm_start.batch_size = 1
    c.warm_start.lr = 2e-4
    c.warm_start.max_len = 2048
    c.warm_start.abridge_words = 6      # thoughts, plans and calls cut to 6 words: the protocol, not the prose
    c.warm_start.max_subtasks = 4       # 4 subtasks x (search, read): N = 4 in R_tool's band (2 <= N <= 8)
    c.warm_start.max_tool_calls = 2
    c.warm_start.max_references = 0     # subtask answers without reference lists (the report keeps its own)
    c.warm_start.report_sentences = 1   # a report with its sections and citations (what the judge reads)
    c.rollout.group_size = 4
    c.rollout.max_turns = 10            # tool calls per episode (R_tool pays up to 8)
    c.rollout.max_tokens = 2048
    c.rollout.max_turn_tokens = 384     # the report is the longest turn (~250 tokens)
    c.rollout.max_observation_tokens = 48   # 24 tokens of each observation and a truncation note
    c.rollout.prefill_chunk = 256
    c.grpo.minibatches = 4              # 1 row (episode) per optimizer step
    c.grpo.dynamic_sampling_rounds = 0  # on CPU a rollout is most of a step: no redraws (timings above)
    c.optim.lr = 2e-6
    return c


def smollm2_v5e8() -> ConfigDict:
    """The default job on a TPU v5e-8 (one host, 8 chips of 16 GiB): data parallel (a 135M model needs no
    parameter sharding), bf16 compute, 8 questions x group 8 = 64 episodes per step in 4 optimizer steps of 16."""
    c = smollm2()
    c.workdir = "/tmp/oresearcher/rl-smollm2-v5e8"   # on a TPU VM: a gcsfuse-mounted bucket (BUILD.md, section 4)
    c.mesh = {"data": 8}
    c.aot_target = "tpu:v5e-8"
    c.compute_dtype = "bfloat16"
    c.total_steps = 100
    c.checkpoint_every = 10
    c.questions_per_step = 8
    c.warm_start.num_questions = 64
    c.warm_start.steps = 200
    c.warm_start.batch_size = 8
    c.warm_start.lr = 1e-4
    c.rollout.group_size = 8
    c.grpo.minibatches = 4
    c.grpo.dynamic_sampling_rounds = 3
    return c


def tiny() -> ConfigDict:
    c = _base()
    c.workdir = "/tmp/oresearcher/rl-tiny"
    c.model = "tiny"
    c.tokenizer = str(TINY_TOKENIZER)              # 512-token BPE with a ChatML template
    c.model_overrides.vocab_size = 512
    c.model_overrides.attention_block = 256       # update step 5.9 s vs 9.3 s dense (32 x 1280 tokens, 2 cores)
    c.total_steps = 20
    c.checkpoint_every = 20
    # every step the same 4 questions (those of the warm start) x group 8: steps 1-5 and 16-20 are compared on
    # the same questions, so the format-reward curve measures the policy, not which questions were drawn.
    # (2 questions x 8 is 3x faster but did not learn: format 0.44 on step 1, 0.31 on steps 14-18.)
    c.num_questions = 4
    c.questions_per_step = 4
    c.warm_start.num_questions = 4
    c.warm_start.steps = 200
    c.warm_start.batch_size = 2
    c.warm_start.lr = 5e-3
    c.warm_start.max_len = 1280                   # the system prompt alone is ~770 tokens of this tokenizer
    c.warm_start.abridge_words = 2
    c.warm_start.max_tool_calls = 1
    c.warm_start.max_references = 0
    c.rollout.group_size = 8
    c.rollout.max_turns = 3
    c.rollout.max_tokens = 1280                   # prompt ~770 + response <= 510 (they write ~200-260)
    c.rollout.max_turn_tokens = 256
    c.rollout.max_observation_tokens = 96
    c.rollout.prefill_chunk = 512
    c.grpo.minibatches = 1
    c.grpo.length_multiple = 640                  # episodes of ~1000 tokens train at T = 1280, not 2048
    c.grpo.dynamic_sampling_rounds = 0            # the measured curve above is without redraws
    c.rollout.backend = "lockstep"                # the measured curve above was sampled by the lockstep sampler
    c.max_staleness = 0                           # and trained synchronously
    c.optim.lr = 2e-4
    return c


def qwen_gpu8() -> ConfigDict:
    """Qwen2.5-7B, 32k-token episodes, 16 questions x 8 per step on one 8xH100 host (fp32 weights and Adam
    moments over fsdp 8). 4 optimizer steps of 32 episodes each, every one accumulated over 4 microbatches of 8
    episodes (one per GPU): memory is set by grpo.microbatch_tokens, not by the number of optimizer steps.
    AOT: python -m oresearcher.aot --config=configs/rl.py:qwen2.5-7b-gpu8 (BUILD.md section 5)."""
    c = _base()
    c.model = "/ckpt/qwen2.5-7b-sft"                      # the SFT export (HF layout)
    c.init_checkpoint = ""
    c.warm_start.enabled = False
    c.mesh = dict(common.MESHES["gpu-8"])
    c.aot_target = "gpu:h100x8"
    c.compute_dtype = "bfloat16"
    c.remat = "full"
    c.total_steps = 500
    c.questions_per_step = 16
    c.rollout.max_tokens = 32768
    c.rollout.max_turn_tokens = 4096
    c.rollout.max_observation_tokens = 4096
    c.grpo.minibatches = 4
    c.grpo.microbatch_tokens = 8 * 32768                  # one 32k episode per GPU per microbatch
    c.optim.lr = 1e-6
    # The engine beside the trainer (colocated): its bf16 weight copy (tensor 4 x data 2: 28 heads and 4 KV heads
    # split 4 ways) and a dense cache of 16 slots x 32k tokens (224 MiB per slot per GPU) stay resident through
    # the update, whose own peak is most of an H100; 16 slots is what fits beside it (AOT: BUILD.md section 5).
    # The 128 episodes of a step go through the 16 slots, each freed slot refilled at once.
    c.rollout.slots = 16
    # synchronous: the asynchronous loop's parameter copy (3.55 GiB per GPU) does not fit beside the above
    c.max_staleness = 0
    return c


def qwen72b_v5p128() -> ConfigDict:
    """Qwen2.5-72B, 64k-token episodes, 64 questions x 8 per step on a TPU v5p-128 slice (64 chips): every
    episode's tokens split over 4 chips (ring attention), fp32 weights and Adam moments over all 64
    (fsdp 16 x sequence 4; RL's lr 1e-6 updates vanish in bf16 weights), 4 optimizer steps of 128 episodes, each
    accumulated over microbatches of 16 episodes (one per fsdp group).
    AOT: python -m oresearcher.aot --config=configs/rl.py:qwen2.5-72b-v5p-128 -> does NOT fit yet: XLA:TPU
    refuses with 341.35 GiB of temporaries per chip (BUILD.md section 5), against 56 GiB for the SFT step of the
    same layout (configs/sft.py:qwen2.5-72b-v5p128-64k); what holds the difference is still to be found."""
    c = qwen_gpu8()
    c.model = "gs://your-bucket/qwen2.5-72b-sft"
    c.mesh = dict(common.MESHES["v5p-128-cp4"])
    c.rules = common.rules(*common.CONTEXT_PARALLEL)
    c.attention = "ring"
    c.aot_target = "tpu:v5p-128"
    c.questions_per_step = 64
    c.rollout.max_tokens = 65536
    c.grpo.microbatch_tokens = 16 * 65536
    # The engine's inference layout here: tensor 8 (64 heads, 8 KV heads) x data 8, bf16 weights 16.9 GiB per
    # chip; a 64k-token slot's dense cache is 20 GiB (2.5 GiB per chip of its tensor group), so 32 slots (10 GiB
    # per chip) stay resident beside the training state (AOT: BUILD.md section 5).
    c.rollout.slots = 32
    return c


def qwen72b_v5p() -> ConfigDict:
    """The same on a v5p-256 slice (128 chips, a 4x4x8 torus): fsdp 32 x sequence 4 (data 2 x fsdp 16 would
    split a torus axis), microbatches of 32 episodes."""
    c = qwen72b_v5p128()
    c.mesh = {"fsdp": 32, "sequence": 4}
    c.aot_target = "tpu:v5p-256"
    c.grpo.microbatch_tokens = 32 * 65536
    return c


PRESETS = {"smollm2": smollm2, "smollm2-v5e8": smollm2_v5e8, "tiny": tiny, "qwen2.5-7b-gpu8": qwen_gpu8,
           "qwen2.5-72b-v5p-128": qwen72b_v5p128, "qwen2.5-72b-v5p-256": qwen72b_v5p}


def get_config(preset: str | None = None) -> ConfigDict:
    name = preset or "smollm2"
    if name not in PRESETS:
        raise ValueError(f"configs/rl.py: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
