"""Ahead-of-time compilation for TPU slices and GPU hosts from this CPU machine (oresearcher/aot.py).

Needs libtpu (TPU topologies) and the CUDA PJRT plugin (GPU topologies) from PyPI; without them the tests are
skipped with the install command.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from oresearcher import aot, losses

ROOT = Path(__file__).resolve().parents[1]
HAVE_TPU = importlib.util.find_spec("libtpu") is not None
HAVE_CUDA = importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
needs_tpu = pytest.mark.skipif(not HAVE_TPU, reason="pip install libtpu==0.0.42.1 (TPU compiler for AOT)")
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="pip install jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2")
FITS = re.compile(r"^fits: (yes|no) \(peak (\d+\.\d\d) GiB of (\d+\.\d\d) GiB\)$")


@needs_tpu
@pytest.mark.parametrize("spec, chips, kind, hbm", [("tpu:v5e-8", 8, "TPU v5 lite", 15.75),
                                                    ("tpu:v5p-128", 64, "TPU v5", 95.74),
                                                    ("tpu:v6e-256", 256, "TPU v6 lite", 31.25)])
def test_tpu_slices_have_their_chips(spec, chips, kind, hbm):
    target = aot.make_target(spec)
    assert len(target.devices) == chips
    assert {d.device_kind for d in target.devices} == {kind}
    assert target.capacity == int(hbm * aot.GiB)


@needs_cuda
def test_gpu_targets_span_hosts():
    one = aot.make_target("gpu:h100x8")
    two = aot.make_target("gpu:h100x16")
    assert len(one.devices) == 8 and len(two.devices) == 16
    assert {d.device_kind for d in two.devices} == {"NVIDIA H100 80GB HBM3"}
    assert one.capacity == int(aot.GPU_SPECS["h100"]["memory"] * 0.95)


def test_bad_target_names_the_spelling():
    with pytest.raises(ValueError, match="tpu:v5p-128"):
        aot.make_target("tpu:v4-8")
    with pytest.raises(ValueError, match="gpu:h100x8"):
        aot.make_target("gpu:rtx9000x2")
    with pytest.raises(ValueError, match="expected tpu:"):
        aot.make_target("h100")


def _compile_matmul(target, rows):
    """x [rows, 256] sharded over 8 devices; y = x @ x.T replicated: y alone is rows^2 * 2 bytes per device."""
    mesh = Mesh(np.array(target.devices[:8]), ("x",))
    x = jax.ShapeDtypeStruct((rows, 256), jnp.bfloat16, sharding=NamedSharding(mesh, P("x")))
    return aot.compile_on(target, lambda a: a @ a.T, x, out_shardings=NamedSharding(mesh, P()))


@needs_tpu
def test_memory_report_says_fits_and_does_not_fit():
    target = aot.make_target("tpu:v5e-8")
    small = aot.MemoryReport.of(_compile_matmul(target, 4096), target.capacity)
    assert small.fits and small.outputs == 4096 * 4096 * 2
    assert FITS.match(small.lines()[-1]).group(1) == "yes"
    rows = 128 * 1024  # 128k x 128k bf16 = 32 GiB of output on every chip of 15.75 GiB
    with pytest.raises(Exception) as refused:  # XLA:TPU refuses to finish a compile that cannot fit
        _compile_matmul(target, rows)
    big = aot.MemoryReport.out_of_memory(refused.value, target.capacity)
    assert big is not None and not big.fits
    last = FITS.match(big.lines()[-1])
    assert last and last.group(1) == "no" and float(last.group(3)) == 15.75
    assert float(last.group(2)) >= rows * rows * 2 / aot.GiB


@needs_cuda
def test_gpu_report_says_does_not_fit():
    target = aot.make_target("gpu:h100x8")
    rows = 200 * 1024  # 78 GiB of output per GPU alone: more than 0.95 x 79.2 GiB
    report = aot.MemoryReport.of(_compile_matmul(target, rows), target.capacity, aot.GPU_AOT_MARGIN)
    assert report.outputs == rows * rows * 2 and not report.fits
    assert FITS.match(report.lines()[-1]).group(1) == "no"


@needs_cuda
def test_gpu_report_adds_the_measured_margin():
    target = aot.make_target("gpu:h100x8")
    compiled = _compile_matmul(target, 8192)
    plain = aot.MemoryReport.of(compiled, target.capacity)
    margin = aot.MemoryReport.of(compiled, target.capacity, aot.GPU_AOT_MARGIN)
    assert plain.outputs == 8192 * 8192 * 2
    assert margin.peak == int(plain.peak * (1 + aot.GPU_AOT_MARGIN))


def _full_cross_entropy_sums(model, batch):
    """The unchunked reference: all [B, T, V] logits at once."""
    logits = model(batch["input_ids"], batch["positions"], batch["segment_ids"])
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    return losses.masked_sum(-picked, batch["loss_mask"])


def test_chunked_loss_equals_full_and_needs_less_memory():
    """oresearcher.losses projects the vocabulary chunk by chunk: same loss and gradients as the full [B, T, V]
    logits, and the compiled gradient step holds far fewer temporaries (figures printed with -s)."""
    import dataclasses

    from flax import nnx

    from oresearcher.model import PRESETS, Decoder

    rng = np.random.default_rng(0)
    cfg = dataclasses.replace(PRESETS["tiny"], vocab_size=4096)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    b, t = 2, 256

    def batch_of(b, t):
        ids = rng.integers(0, cfg.vocab_size, (b, t + 1))
        return {"input_ids": jnp.asarray(ids[:, :-1], jnp.int32), "targets": jnp.asarray(ids[:, 1:], jnp.int32),
                "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
                "segment_ids": jnp.ones((b, t), jnp.int32), "loss_mask": jnp.asarray(rng.random((b, t)) < 0.7)}

    batch = batch_of(b, t)
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_fn(sums):
        def f(p, batch):
            s, n = sums(nnx.merge(graphdef, p), batch)
            return s / n
        return jax.jit(jax.value_and_grad(f))

    chunked = loss_fn(lambda m, bt: losses.cross_entropy_sums(m, bt, 128))
    full = loss_fn(_full_cross_entropy_sums)
    (lc, gc), (lf, gf) = chunked(params, batch), full(params, batch)
    np.testing.assert_allclose(lc, lf, rtol=1e-5)
    for a, r in zip(jax.tree.leaves(gc), jax.tree.leaves(gf)):
        np.testing.assert_allclose(a, r, atol=1e-6, rtol=1e-4)

    # Memory: the loss head alone (hidden states -> vocabulary -> token log-probs), gradients to the hidden states
    # and the unembedding, compiled only: 16k tokens x 32k vocabulary = 2 GiB of fp32 logits when unchunked.
    t, d, v = 16384, 64, 32768
    h = jax.ShapeDtypeStruct((1, t, d), jnp.float32)
    w = jax.ShapeDtypeStruct((d, v), jnp.float32)
    y = jax.ShapeDtypeStruct((1, t), jnp.int32)

    def head(chunk):
        def f(h, w, y):
            if chunk:
                logp = losses.logprobs_from_hidden(lambda x: x @ w, h, y, chunk)
            else:
                logp = jnp.take_along_axis(jax.nn.log_softmax(h @ w, axis=-1), y[..., None], axis=-1)[..., 0]
            return -jnp.mean(logp)
        return jax.jit(jax.grad(f, argnums=(0, 1))).lower(h, w, y).compile().memory_analysis().temp_size_in_bytes

    full, chunked = head(0), head(512)
    print(f"\nloss head, 16k tokens x 32k vocabulary, compiled temporaries: full logits {full / 2**20:.0f} MiB, "
          f"chunked (512) {chunked / 2**20:.0f} MiB")
    assert full >= t * v * 4  # the whole fp32 logits live at once
    assert chunked < full / 8


def _aot_cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "oresearcher.aot", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines


@needs_tpu
@pytest.mark.slow
def test_cli_compiles_the_real_sft_step_and_says_when_it_does_not_fit():
    rc, lines = _aot_cli("--config=configs/sft.py:tiny", "--target=tpu:v5e-8")
    assert rc == 0, lines
    assert any(line.startswith("mesh: ") for line in lines) and FITS.match(lines[-1]).group(1) == "yes"
    # The same preset with 128k-token rows and dense attention: [T, T] fp32 scores cannot fit a 15.75 GiB chip.
    rc, lines = _aot_cli("--config=configs/sft.py:tiny", "--target=tpu:v5e-8", "--config.data.seq_len=131072",
                         "--config.data.batch_size=8", "--attention=dense")
    last = FITS.match(lines[-1])
    assert rc == 3 and last and last.group(1) == "no" and float(last.group(2)) > float(last.group(3)), lines


@needs_cuda
@pytest.mark.slow
def test_cli_compiles_the_real_rl_step_for_a_gpu_host():
    rc, lines = _aot_cli("--config=configs/rl.py:tiny", "--target=gpu:h100x8")
    assert rc == 0, lines
    assert "(XLA's figure + 5% margin)" in " ".join(lines) and FITS.match(lines[-1]).group(1) == "yes"


@needs_tpu
@pytest.mark.slow
def test_cli_reports_split_placement_each_side_on_its_own_devices():
    rc, lines = _aot_cli("--config=configs/rl.py:tiny", "--target=tpu:v5e-8", "--config.placement=split",
                         "--config.rollout_devices=4", "--config.mesh={'data': 4}")
    assert rc == 0, lines
    text = "\n".join(lines)
    assert "split placement: trainer on 4 devices, engine on 4" in text
    assert "nothing: the engine is on its own devices" in text and FITS.match(lines[-1]).group(1) == "yes"
