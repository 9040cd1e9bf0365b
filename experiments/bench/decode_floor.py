"""A lower bound for one decode step of a sampler at a given batch: its weight products alone.

Every layer's matrices and the unembedding, in the layout the sampler keeps them in (`Sampler.weights()`: on CPU
packed for the cpu_kernels matmul, or the decoder's transposed blocks; decoder.decode_layout), each product fed
by the one before as in a step
(q/k/v -> output projection -> gate/up -> down, layer after layer, then the vocabulary projection): products that
depend on each other cannot overlap, so timing them independently would understate a step. Nothing else runs (no
attention, norms, rotary, sampling or cache), so a step of this sampler cannot take less; B / this time bounds
its tokens/s. At small batches these products stream every weight from memory once per step, so the figure is
close to what memory bandwidth allows.
"""
from __future__ import annotations

import statistics
import time


def weight_products(sampler, batch: int, repeats: int = 20) -> dict:
    import jax
    import jax.numpy as jnp

    from oresearcher.model import cpu_kernels
    from oresearcher.model.decoder import dense, dense_fused

    model = sampler.model
    cfg = model.cfg
    weights = sampler.weights()
    head = weights["head"]
    if head is None:
        head = model.lm_head[...] if not cfg.tie_embeddings else model.embed[...].T
    nq = cfg.num_heads * cfg.head_dim

    @jax.jit
    def products(layers, head, seed):
        x = jnp.full((batch, cfg.hidden_size), seed, head.dtype)
        for p in layers:
            if "fused_qkv" in p:
                a = dense_fused(x, p["fused_qkv"])[:, :nq]
                x = dense_fused(a, p["fused_o"])
                gate, up = jnp.split(dense_fused(x, p["fused_gate_up"]), 2, axis=-1)
                x = dense_fused(gate * up, p["fused_down"])
            else:   # k and v feed nothing here: a sum of each keeps XLA from dropping their products
                a = dense(x, p["wq"]).reshape(batch, -1) + jnp.sum(dense(x, p["wk"])) + jnp.sum(dense(x, p["wv"]))
                x = dense(a, p["wo"].reshape(nq, -1))
                x = dense(dense(x, p["w_gate"]) * dense(x, p["w_up"]), p["w_down"])
        return jnp.sum(cpu_kernels.matmul(x, head) if head.ndim == 3 else x @ head)

    layers = weights["layers"]
    products(layers, head, 1.0).block_until_ready()
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        products(layers, head, float(i)).block_until_ready()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    matrices = [w for p in layers for name in MATRICES for w in jax.tree.leaves(p.get(name))] + [head]
    mbytes = sum(w.size * w.dtype.itemsize for w in matrices) / 1e6
    return {"weight_products_per_step_s": step, "weights_mb": mbytes, "floor_tokens_per_s": batch / step,
            "implied_gb_s": mbytes / 1e3 / step, "layout": sampler.weight_layout}


# the matrices of a layer, in either layout (norms and biases are not streamed products)
MATRICES = ("fused_qkv", "fused_o", "fused_gate_up", "fused_down", "wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
