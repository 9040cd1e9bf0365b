"""The CPU decode kernels (oresearcher/model/cpu_kernels.cc) against XLA's own ops: the panel matmul for every
row count its tiles handle (1-8 and past 8, the thread split included), and decode attention against
decoder.attention, grouped-query, with masked slots, a row with nothing visible and a window short of the cache."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oresearcher.model import cpu_kernels
from oresearcher.model.decoder import attention


@pytest.fixture(scope="module", autouse=True)
def kernels():
    assert cpu_kernels.available(), cpu_kernels.unavailable_reason()


@pytest.mark.parametrize("k,j", [(64, 32), (576, 960), (200, 4096)])
def test_panel_matmul_equals_xla(k, j):
    rng = np.random.default_rng(k + j)
    w = rng.standard_normal((k, j)).astype(np.float32)
    packed = jax.jit(cpu_kernels.pack)(w)
    for m in (1, 3, 8, 9, 17, 64):
        x = rng.standard_normal((m, k)).astype(np.float32)
        want = x.astype(np.float64) @ w.astype(np.float64)
        got = np.asarray(jax.jit(cpu_kernels.matmul)(x, packed))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.sqrt(k))
    x3 = rng.standard_normal((2, 5, k)).astype(np.float32)         # leading axes are rows too
    np.testing.assert_allclose(np.asarray(cpu_kernels.matmul(x3, packed)), x3 @ w, rtol=1e-4, atol=1e-3)


def test_panel_matmul_rejects_what_it_cannot_pack():
    with pytest.raises(ValueError, match="multiple of 32"):
        cpu_kernels.pack(jnp.ones((8, 40), jnp.float32))
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.pack(jnp.ones((8, 64), jnp.bfloat16))
    with pytest.raises(ValueError, match="does not fit"):
        cpu_kernels.matmul(jnp.ones((2, 9)), cpu_kernels.pack(jnp.ones((8, 64), jnp.float32)))


@pytest.mark.parametrize("t,g,hd", [(1, 3, 64), (3, 3, 64), (1, 7, 128), (2, 2, 16), (1, 2, 48)])
def test_decode_attention_equals_decoder_attention(t, g, hd):
    """Every path of the kernel: query heads grouped per KV head (hd 64 or 128), row by row (hd 16, a multiple of
    16; hd 48 with T = 1 and any hd), several positions per row; visible counts not a multiple of 16."""
    b, kv, s, window = 3, 2, 40, 37
    rng = np.random.default_rng(t * 1000 + g * 10 + hd)
    q = 3 * rng.standard_normal((b, t, kv * g, hd)).astype(np.float32)    # peaked and flat softmaxes both
    k = rng.standard_normal((b, kv, s, hd)).astype(np.float32)
    v = rng.standard_normal((b, kv, s, hd)).astype(np.float32)
    mask = rng.random((b, t, window)) < 0.6
    mask[0, 0, :] = False                   # nothing visible: uniform weights, as decoder.attention gives
    mask[1, :, 5] = True
    want = attention(jnp.asarray(q), jnp.asarray(k[:, :, :window]), jnp.asarray(v[:, :, :window]),
                     jnp.asarray(mask), kv_heads_first=True)
    got = jax.jit(cpu_kernels.attention)(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    for bad in (k[..., : hd // 2], k[:1]):
        with pytest.raises(ValueError, match="do not fit"):
            cpu_kernels.attention(q, bad, bad, mask)


def test_disabled_kernels_leave_the_sampler_on_xla():
    """ORESEARCHER_CPU_KERNELS=0 (as a machine without a compiler): the kernels report why, the sampler's default
    layout is XLA's transposed blocks, and asking for panels is a clear error."""
    code = """
from flax import nnx
from oresearcher.model import cpu_kernels
from oresearcher.model.config import PRESETS
from oresearcher.model.decoder import Decoder
from oresearcher.sampler import Sampler
model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
print(cpu_kernels.available(), cpu_kernels.unavailable_reason(), Sampler(model).weight_layout)
try:
    Sampler(model, weight_layout="panels")
except RuntimeError as e:
    print("refused:", e)
"""
    env = {**os.environ, "ORESEARCHER_CPU_KERNELS": "0", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "False disabled by ORESEARCHER_CPU_KERNELS=0 blocks"
    assert lines[1].startswith("refused: Sampler: weight_layout='panels' needs the CPU kernels")


def test_the_build_is_cached_per_source_and_machine(tmp_path):
    """A fresh cache directory gets one library; building again reuses it (same name, not rewritten)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    code = "from oresearcher.model import cpu_kernels; print(cpu_kernels._build())"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    path = first.stdout.strip().splitlines()[-1]
    assert path.startswith(str(tmp_path / "oresearcher" / "kernels")) and os.path.exists(path)
    mtime = os.stat(path).st_mtime_ns
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert again.stdout.strip().splitlines()[-1] == path and os.stat(path).st_mtime_ns == mtime
    assert len(os.listdir(tmp_path / "oresearcher" / "kernels")) == 1      # no temporary left behind
