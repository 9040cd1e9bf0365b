"""CPU kernels for decoding, as XLA FFI custom calls: a matmul against weights packed in panels, and attention
of a few query positions over the KV cache.

    from oresearcher.model import cpu_kernels
    if cpu_kernels.available():                  # builds the kernels on first use (a few seconds), then cached
        wp = cpu_kernels.pack(w)                 # [K, J] -> [J / 32, K, 32], once per weight version
        y = cpu_kernels.matmul(x, wp)            # x [..., K] @ w -> [..., J]
        o = cpu_kernels.attention(q, k_cache, v_cache, mask)   # as decoder.attention(..., kv_heads_first=True)
    (inside or outside jit; CPU only; float32)

Why: a decode step multiplies a few rows by every weight matrix, so it is bound by how fast the weights stream
from memory. XLA:CPU's dots read them well below that for these shapes (they pack the weight before multiplying;
SmolLM2-135M, the weight products of one token step chained as in a step, 538 MB of fp32 weights: 29.5 ms at 8
rows in the best XLA layout, decoder's transposed blocks, against 18.5 ms here; 22.2 vs 18.2 ms at one row, 61 vs
51 ms at 32 rows; at hundreds of rows, as in prefill, both run at about the measured GEMM peak). The packed layout
makes the kernel's read of W one front-to-back stream. With the weights that fast, attention over the cache
became a third of a decode step (SmolLM2, batch 8: 7.5 ms per token step in XLA's batched [3, 64] x [64, 256]
products alone, each a few microseconds of work); the attention kernel reads each cached K and V row once for
all the query heads that share it (head_dim 64 or 128 and up to 8 query heads per KV head, as in Llama, Qwen2 and
Qwen3; other shapes row by row). The tiles and the threading are described in cpu_kernels.cc.

Build: the C++ source beside this file is compiled with the system compiler (`c++`, or $CXX) for this machine
(-O3 -march=native) against jaxlib's FFI headers, into $XDG_CACHE_HOME/oresearcher/kernels (~/.cache by
default) under a name hashing the source, flags, compiler, jaxlib version and CPU, so it is built once per
machine and reused. Without a compiler, or with ORESEARCHER_CPU_KERNELS=0, `available()` is False (with the
reason in `unavailable_reason()`) and callers keep XLA's own ops: nothing else depends on the kernels.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

PANEL = 32                       # columns per panel (cpu_kernels.cc: kPanel)
MATMUL, ATTENTION = "oresearcher_panel_matmul", "oresearcher_decode_attention"
SOURCE = Path(__file__).with_suffix(".cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
_state: dict = {}                # {"ok": bool, "why": str, "lib": ctypes.CDLL}
log = logging.getLogger(__name__)


def available() -> bool:
    """True when the kernels are built (or were cached) and registered with XLA for CPU in this process."""
    if "ok" not in _state:
        try:
            _state["lib"] = _load()
            _state["ok"], _state["why"] = True, ""
        except Exception as e:  # noqa: BLE001 -- any failure means "use XLA's dots", said once
            _state["ok"], _state["why"] = False, str(e)
            log.warning("CPU decode kernels unavailable, decoding uses XLA's own ops: %s", e)
    return _state["ok"]


def unavailable_reason() -> str:
    available()
    return _state["why"]


def packable(w) -> bool:
    """Whether a [K, J] float32 matrix can be packed (J a multiple of the panel width)."""
    return w.ndim == 2 and w.shape[1] % PANEL == 0 and w.dtype == jnp.float32


def pack(w: jax.Array) -> jax.Array:
    """[K, J] -> [J / 32, K, 32]: packed[p, k, c] = w[k, 32 p + c]."""
    if not packable(w):
        raise ValueError(f"cpu_kernels.pack: need a float32 [K, J] matrix with J a multiple of {PANEL}, "
                         f"got {w.dtype} {tuple(w.shape)}")
    k, j = w.shape
    return w.reshape(k, j // PANEL, PANEL).transpose(1, 0, 2)


def matmul(x: jax.Array, packed: jax.Array) -> jax.Array:
    """x [..., K] float32 @ W -> [..., J] float32, W given packed (`pack`)."""
    if packed.ndim != 3 or packed.shape[2] != PANEL or x.shape[-1] != packed.shape[1]:
        raise ValueError(f"cpu_kernels.matmul: x {tuple(x.shape)} does not fit a packed weight "
                         f"{tuple(packed.shape)} ([J / {PANEL}, K, {PANEL}])")
    out = jax.ShapeDtypeStruct((*x.shape[:-1], packed.shape[0] * PANEL), jnp.float32)
    return jax.ffi.ffi_call(MATMUL, out)(x.astype(jnp.float32), packed)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention over a KV cache, as decoder.attention(q, k[:, :, :W], v[:, :, :W], mask,
    kv_heads_first=True) computes it: q [B, T, H, hd], k/v [B, KV, S, hd] (only the first W slots are read, in
    place), mask bool [B, T, W] -> [B, T, H, hd]. All float32."""
    b, t, h, hd = q.shape
    if k.ndim != 4 or k.shape != v.shape or k.shape[0] != b or k.shape[3] != hd or h % k.shape[1] \
            or mask.shape[:2] != (b, t) or not 0 < mask.shape[2] <= k.shape[2]:
        raise ValueError(f"cpu_kernels.attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} and "
                         f"mask {tuple(mask.shape)} do not fit [B, T, H, hd], [B, KV, S, hd] and [B, T, W <= S]")
    f32 = jnp.float32
    return jax.ffi.ffi_call(ATTENTION, jax.ShapeDtypeStruct(q.shape, f32))(
        q.astype(f32), k.astype(f32), v.astype(f32), mask.astype(bool))


def _load() -> ctypes.CDLL:
    if os.environ.get("ORESEARCHER_CPU_KERNELS", "1") == "0":
        raise RuntimeError("disabled by ORESEARCHER_CPU_KERNELS=0")
    if platform.system() != "Linux":
        raise RuntimeError(f"built only on Linux (this is {platform.system()})")
    path = _build()
    lib = ctypes.CDLL(str(path))
    jax.ffi.register_ffi_target(MATMUL, jax.ffi.pycapsule(lib.OresearcherPanelMatmul), platform="cpu")
    jax.ffi.register_ffi_target(ATTENTION, jax.ffi.pycapsule(lib.OresearcherDecodeAttention), platform="cpu")
    return lib


def _build() -> Path:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        raise RuntimeError("no C++ compiler found (install g++, or set CXX)")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha256("\n".join([SOURCE.read_text(), " ".join(FLAGS), *version, jax.__version__,
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "oresearcher" / "kernels"
    path = cache / f"cpu_kernels-{key}.so"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:   # built aside, then renamed: concurrent builds are safe
        out = Path(tmp) / path.name
        cmd = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
        os.replace(out, path)
    return path


def _cpu_signature() -> str:
    """The CPU's model and feature flags: -march=native code is only reused on the same kind of CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep)))
