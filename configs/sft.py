"""SFT configs: `python -m oresearcher.train --config=configs/sft.py[:preset] [--config.key=value ...]`.

Presets (each says how to run it and what it should reach):

  tiny (default)      python -m oresearcher.train --config=configs/sft.py:tiny --config.workdir=/tmp/sft-tiny
      Tests and CI: a random 2-layer, 64-wide Llama decoder with the fixture tokenizer on the fixture
      trajectories (tests/fixtures/). 200 steps of batch 1 x 2304 on CPU in ~1-2 min on 2 cores; the training
      loss falls from ~6.2 (ln 512) by >= 50%, to ~0.7 (eval ~1.0): it memorises the fixture assistant turns.
  smollm2             python -m oresearcher.train --config=configs/sft.py:smollm2 \
                          --config.data.train=/path/trajectories.jsonl --config.workdir=/tmp/sft-smollm2
      CPU demo: full fine-tune of the embedded SmolLM2-135M-Instruct (GGUF, no torch) on trajectories from a file
      (e.g. `python -m synth run ... --out=DIR` output), full remat + blockwise attention (~3.5 GB host memory).
      Batch 1 x 2048: ~20-60 tokens/s on 2 CPU cores (one step per ~40-100 s), so 30 steps take 20-50 min. On the
      fixture trajectories the loss is ~0.94 at step 1 and ~0.65 at step 3 (the model already knows English;
      it is learning the protocol), and keeps falling.
  qwen2.5-7b-gpu8     python -m oresearcher.train --config=configs/sft.py:qwen2.5-7b-gpu8 \
                          --config.model=/ckpt/Qwen2.5-7B-Instruct --config.data.train=/data/sft.jsonl
      One 8xH100 host, FSDP over 8 GPUs, bf16, full remat, 32k-token packed rows, 16 rows per step (2 x 8
      microbatches: one row per GPU); PAPER §5 hyper-parameters (lr 1.4e-5, warmup 10%, 4 epochs). Targets (not
      yet measured on GPUs): ~35-45% MFU, final train loss ~0.3-0.5 on synthesized trajectories.
  qwen2.5-72b-v5p     python -m oresearcher.train --config=configs/sft.py:qwen2.5-72b-v5p \
                          --config.model=gs://.../Qwen2.5-72B-Instruct --config.data.train=...
      The paper's run: a TPU v5p-256 slice (128 chips: fsdp 32 x sequence 4), 64k-token rows with ring
      attention over the sequence axis, bf16 params and compute, 32 rows per step (one per data x fsdp group).
      To be proven to fit by ahead-of-time compilation (oresearcher.aot).
"""
from ml_collections import ConfigDict

from configs import common

FIXTURES = "tests/fixtures"


def _base() -> ConfigDict:
    c = common.base_config()
    c.stage = "sft"
    c.workdir = "/tmp/oresearcher/sft"
    c.total_steps = 200
    c.log_every = 10
    c.checkpoint_every = 100
    c.eval_every = 50                 # eval loss on the held-out split; a multiple of log_every (logged with it)
    c.progress = True            # tqdm bar on stderr

    c.model = "tiny"
    c.model_overrides = common.model_overrides()  # any ModelConfig field, changed on a preset model
    c.tokenizer = "gguf:embedded"     # for a preset model: an HF tokenizer directory or "gguf:embedded"
    c.param_dtype = ""                # "" = float32 for checkpoints, the preset's own for presets; "bfloat16"
    c.compute_dtype = ""              # "" = as param_dtype's default; "bfloat16" = bf16 matmuls (fp32 softmax/norms)
    c.remat = ""                      # "" = the model's own; "full" | "dots_saveable" | ... (ModelConfig.remat)
    c.attention = ""                  # "" = the model's own; "ring" | "allgather" | "flash" | ... for long rows
    c.export_dir = ""                 # write the final policy here in HF layout (save_hf) when set; relative:
                                      # inside the workdir
    c.aot_target = ""                 # the accelerator an accelerator preset is sized for: `python -m
                                      # oresearcher.aot --config=configs/sft.py:PRESET` compiles for it

    c.data = ConfigDict()
    c.data.train = f"{FIXTURES}/trajectories.jsonl"  # JSONL trajectory records; several separated by commas
    c.data.eval = ""                  # held-out JSONL; "" = hold out eval_fraction of the train records
    c.data.eval_fraction = 0.1
    c.data.seq_len = 512              # packed row length (tokens); longer trajectories are bad records
    c.data.batch_size = 4             # rows per optimizer step (all microbatches together)
    c.data.on_bad_record = "skip"     # "skip" (named and counted) | "stop" (the run ends naming the record)

    c.grad_accum = 1                  # microbatches per step; the loss is the token mean over all of them
    c.loss_chunk = 512                # tokens per chunk of the vocabulary projection (see oresearcher.losses)
    c.loss_remat = True               # recompute each chunk's logits in the backward (False: keep them; small models)

    c.optim = ConfigDict()
    c.optim.lr = 1.4e-5               # PAPER §5
    c.optim.warmup_fraction = 0.1
    c.optim.warmup_steps = 0          # > 0 overrides warmup_fraction
    c.optim.final_lr_fraction = 0.1
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1
    c.optim.grad_clip = 1.0
    return c


def tiny() -> ConfigDict:
    c = _base()
    c.workdir = "/tmp/oresearcher/sft-tiny"
    c.model = "tiny"
    c.tokenizer = f"{FIXTURES}/tiny_tokenizer"
    c.model_overrides.vocab_size = 512  # the fixture tokenizer's vocabulary
    c.model_overrides.attention_block = 256
    c.attention = "flash"               # blockwise attention: ~4x faster than dense [T, T] scores at 2k tokens
    c.data.seq_len = 2304               # the fixture trajectories are 2.0-2.2k tokens each
    c.data.batch_size = 1
    c.total_steps = 200
    c.log_every = 10
    c.eval_every = 50
    c.optim.lr = 3e-3
    c.optim.weight_decay = 0.0
    return c


def smollm2() -> ConfigDict:
    c = _base()
    c.workdir = "/tmp/oresearcher/sft-smollm2"
    c.model = "gguf:embedded"
    c.data.train = "/tmp/oresearcher/trajectories.jsonl"
    c.remat = "full"                  # keeps a step of 2048 tokens within ~3 GB of host memory
    c.attention = "flash"             # no [T, T] score matrices
    c.data.seq_len = 2048
    c.data.batch_size = 1
    c.total_steps = 30
    c.log_every = 1
    c.checkpoint_every = 10
    c.eval_every = 10
    c.optim.lr = 2e-5
    return c


def qwen_gpu8() -> ConfigDict:
    c = _base()
    c.workdir = "/tmp/oresearcher/sft-qwen2.5-7b"
    c.model = "/ckpt/Qwen2.5-7B-Instruct"
    c.mesh = dict(common.MESHES["gpu-8"])
    c.param_dtype = "float32"         # fp32 weights, grads, Adam moments: 7.6B x 16 B / 8 GPUs = 15 GB per GPU
    c.compute_dtype = "bfloat16"
    c.remat = "full"
    c.aot_target = "gpu:h100x8"       # python -m oresearcher.aot --config=configs/sft.py:qwen2.5-7b-gpu8
    c.data.seq_len = 32768
    c.data.batch_size = 16
    c.grad_accum = 2                  # microbatches of 8 rows: one 32k row per GPU (4 rows would not split over 8)
    c.loss_chunk = 1024
    c.total_steps = 2000              # ~4 epochs of ~8k trajectories packed ~2 per 32k row
    c.log_every = 10
    c.checkpoint_every = 200
    c.eval_every = 200
    c.peak_flops_per_device = 989e12  # H100 SXM dense bf16
    return c


def qwen72b_v5p() -> ConfigDict:
    c = _base()
    c.workdir = "gs://BUCKET/oresearcher/sft-qwen2.5-72b"
    c.model = "gs://BUCKET/Qwen2.5-72B-Instruct"
    # 128 chips (v5p-256 counts TensorCores), a 4x4x8 torus: each mesh axis must be a product of torus axes, so
    # data 2 x fsdp 16 x sequence 4 cannot be built; fsdp 32 (4x8) x sequence 4 can
    c.mesh = {"fsdp": 32, "sequence": 4}
    c.rules = common.rules(*common.CONTEXT_PARALLEL)  # weights and moments over fsdp x sequence
    c.aot_target = "tpu:v5p-256"
    c.param_dtype = "bfloat16"        # 72.7B x (2 param + 2 grad + 4 Adam, all bf16) B / 128 chips ~ 4.5 GB per chip
    c.compute_dtype = "bfloat16"
    c.remat = "full"
    c.attention = "ring"
    c.data.seq_len = 65536
    c.data.batch_size = 32            # one 64k row per fsdp group, split over 4 chips (sequence)
    c.grad_accum = 1                  # 2 microbatches of 16 rows would not split over fsdp = 32
    c.loss_chunk = 2048
    c.total_steps = 1000
    c.checkpoint_every = 100
    c.eval_every = 100
    c.peak_flops_per_device = 459e12  # TPU v5p dense bf16
    return c


# ------------------------------------------------------------------------------ 64k-token rows (long context)
# Every preset below is proven to fit by compiling its real train step for its target on a CPU host
# (python -m oresearcher.aot --config=configs/sft.py:PRESET --target=TARGET); the peak per device is noted.
def qwen_gpu8_64k() -> ConfigDict:
    """One 8xH100 host, 64k-token rows, one row per GPU (FSDP 8), blockwise attention (flash; attention=cudnn is
    faster on the GPU but cannot be compiled ahead of time without one).
    AOT: --target=gpu:h100x8 -> fits (see BUILD.md section 5 for the peak)."""
    c = qwen_gpu8()
    c.workdir = "/tmp/oresearcher/sft-qwen2.5-7b-64k"
    c.aot_target = "gpu:h100x8"
    c.attention = "flash"
    c.data.seq_len = 65536
    c.data.batch_size = 8
    c.grad_accum = 1
    return c


def qwen_gpu8x2_64k() -> ConfigDict:
    """Two 8xH100 hosts (jax.distributed): data parallel across hosts, FSDP inside; 16 rows of 64k per step.
    AOT: --target=gpu:h100x16."""
    c = qwen_gpu8_64k()
    c.workdir = "/tmp/oresearcher/sft-qwen2.5-7b-64k-2hosts"
    c.aot_target = "gpu:h100x16"
    c.mesh = dict(common.MESHES["gpu-8x2"])
    c.data.batch_size = 16
    return c


def qwen_v5e256_64k() -> ConfigDict:
    """Qwen2.5-7B on a TPU v5e-256 slice (16 GiB chips): 64 rows of 64k per step, each row's tokens split over 4
    chips (ring attention), parameters over all 256. AOT: --target=tpu:v5e-256."""
    c = qwen_gpu8_64k()
    c.workdir = "gs://BUCKET/oresearcher/sft-qwen2.5-7b-v5e"
    c.aot_target = "tpu:v5e-256"
    c.mesh = dict(common.MESHES["v5e-256-cp4"])
    c.rules = common.rules(*common.CONTEXT_PARALLEL)
    c.param_dtype = "bfloat16"
    c.attention = "ring"
    c.data.batch_size = 64
    c.peak_flops_per_device = 197e12  # TPU v5e dense bf16
    return c


def qwen72b_v5p128_64k() -> ConfigDict:
    """Qwen2.5-72B on a TPU v5p-128 slice (64 chips): 16 rows of 64k per step, each row split over 4 chips (ring
    attention), parameters and Adam moments over all 64. AOT: --target=tpu:v5p-128."""
    c = qwen72b_v5p()
    c.mesh = dict(common.MESHES["v5p-128-cp4"])
    c.rules = common.rules(*common.CONTEXT_PARALLEL)
    c.aot_target = "tpu:v5p-128"
    c.data.batch_size = 16
    c.grad_accum = 1
    return c


def qwen72b_v6e256_64k() -> ConfigDict:
    """Qwen2.5-72B on a TPU v6e-256 slice (32 GiB chips): 16 rows of 64k per step, each split over 16 chips (the
    16x16 torus maps mesh axes of 16, not 8). AOT: --target=tpu:v6e-256."""
    c = qwen72b_v5p128_64k()
    c.mesh = dict(common.MESHES["v6e-256-cp16"])
    c.aot_target = "tpu:v6e-256"
    c.data.batch_size = 16
    c.peak_flops_per_device = 918e12  # TPU v6e dense bf16
    return c


PRESETS = {"tiny": tiny, "smollm2": smollm2, "qwen2.5-7b-gpu8": qwen_gpu8, "qwen2.5-72b-v5p": qwen72b_v5p,
           "qwen2.5-7b-gpu8-64k": qwen_gpu8_64k, "qwen2.5-7b-gpu8x2-64k": qwen_gpu8x2_64k,
           "qwen2.5-7b-v5e256-64k": qwen_v5e256_64k, "qwen2.5-72b-v5p128-64k": qwen72b_v5p128_64k,
           "qwen2.5-72b-v6e256-64k": qwen72b_v6e256_64k}


def get_config(preset: str | None = None) -> ConfigDict:
    name = preset or "tiny"
    if name not in PRESETS:
        raise ValueError(f"configs/sft.py: unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name]()
