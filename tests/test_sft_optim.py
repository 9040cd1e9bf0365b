"""Gradient accumulation gives the gradient of the whole batch's token mean, however tokens fall in microbatches;
AdamW + warmup-cosine schedule shape."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from oresearcher import losses, optim
from oresearcher.model import PRESETS, Decoder


def test_accumulated_gradients_equal_the_full_batch_token_mean():
    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    rng = np.random.default_rng(0)
    b, t = 4, 24
    ids = rng.integers(0, 256, size=(b, t + 1)).astype(np.int32)
    mask = np.zeros((b, t), bool)
    mask[0, :20] = True    # microbatch 1 (rows 0-1) has 21 loss tokens, microbatch 2 (rows 2-3) has 3
    mask[1, 5] = True
    mask[3, :3] = True
    batch = {"input_ids": jnp.asarray(ids[:, :-1]), "targets": jnp.asarray(ids[:, 1:]), "loss_mask": jnp.asarray(mask),
             "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
             "segment_ids": jnp.ones((b, t), jnp.int32)}

    def sums(p, mb):
        return losses.cross_entropy_sums(nnx.merge(graphdef, p), mb, 8)

    full_loss, full_grads = jax.value_and_grad(lambda p: (lambda s, n: s / n)(*sums(p, batch)))(params)
    loss2, grads2, tokens = jax.jit(lambda p: optim.accumulate_gradients(sums, p, batch, 2))(params)
    assert float(tokens) == mask.sum()
    np.testing.assert_allclose(float(loss2), float(full_loss), rtol=1e-6)
    for a, g in zip(jax.tree.leaves(grads2), jax.tree.leaves(full_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(g), atol=1e-7, rtol=1e-5)
    # the mean of the two microbatch means is a different (wrong) quantity here
    s1, n1 = sums(params, jax.tree.map(lambda x: x[:2], batch))
    s2, n2 = sums(params, jax.tree.map(lambda x: x[2:], batch))
    assert abs(float((s1 / n1 + s2 / n2) / 2) - float(full_loss)) > 1e-3


def test_warmup_cosine_schedule_and_decay_mask():
    c = ConfigDict(dict(lr=1e-3, warmup_fraction=0.1, warmup_steps=0, final_lr_fraction=0.1, b1=0.9, b2=0.95,
                        eps=1e-8, weight_decay=0.1, grad_clip=1.0))
    tx, schedule = optim.make_optimizer(c, 100)
    assert float(schedule(0)) == 0.0
    assert abs(float(schedule(10)) - 1e-3) < 1e-9
    assert abs(float(schedule(100)) - 1e-4) < 1e-9
    assert float(schedule(5)) < float(schedule(10)) and float(schedule(50)) < float(schedule(10))
    params = {"embed": jnp.ones((4, 2)), "layers": {"attn_norm": jnp.ones((2, 2)), "wq": jnp.ones((2, 2, 2))}}
    mask = optim._decay_mask(params)
    assert mask == {"embed": True, "layers": {"attn_norm": False, "wq": True}}
