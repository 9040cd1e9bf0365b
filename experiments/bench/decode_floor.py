"""A lower bound for one decode step of a decoder at a given batch: its weight products alone.

Every layer matrix and the vocabulary projection, [B, din] @ [din, dout], in one jitted program and nothing else
(no attention, norms, sampling or cache). A sampler whose matmuls are XLA:CPU's fp32 dots needs at least this
long per token step, so B / this time bounds its tokens/s; a target ratio above floor / peer is out of reach
without other matmul kernels or other numerics (e.g. bf16 weights). At small batches these products stream every
weight from memory once per step, so the figure is close to what memory bandwidth allows.
"""
from __future__ import annotations

import statistics
import time


def weight_products(model, batch: int, repeats: int = 20) -> dict:
    import jax
    import jax.numpy as jnp

    d = model.cfg.hidden_size
    shapes = {"wq": (d, -1), "wk": (d, -1), "wv": (d, -1), "wo": (-1, d), "w_gate": (d, -1), "w_up": (d, -1),
              "w_down": (-1, d)}
    mats = [w[i].reshape(shapes[name]) for name, w in model.layers.arrays().items() if name in shapes
            for i in range(w.shape[0])]
    tied = model.cfg.tie_embeddings
    mats.append(model.embed[...] if tied else model.lm_head[...])   # tied: [vocab, d], contracted on d in the jit

    @jax.jit
    def products(ms, seed):
        *layers, head = ms
        x = jnp.full((batch, d), seed, head.dtype)
        return sum(jnp.sum(jnp.full((batch, m.shape[0]), seed, m.dtype) @ m) for m in layers) + jnp.sum(
            x @ (head.T if tied else head))

    products(mats, 1.0).block_until_ready()
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        products(mats, float(i)).block_until_ready()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    mbytes = sum(m.size * m.dtype.itemsize for m in mats) / 1e6
    return {"weight_products_per_step_s": step, "weights_mb": mbytes, "floor_tokens_per_s": batch / step,
            "implied_gb_s": mbytes / 1e3 / step}
