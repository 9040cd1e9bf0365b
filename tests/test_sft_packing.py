"""Packing is invisible to the loss: examples packed into one row give the same summed loss and gradients as the
same examples padded into a row each (segment ids keep attention inside an example, positions restart)."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from oresearcher import losses
from oresearcher.data import Example, collate, collate_row, pack_rows
from oresearcher.model import PRESETS, Decoder


def _examples(seed=0, lengths=(17, 9, 30, 5)):
    rng = np.random.default_rng(seed)
    return [Example(id=f"ex{i}", input_ids=rng.integers(1, 256, n).astype(np.int32), loss_mask=rng.random(n) < 0.6)
            for i, n in enumerate(lengths)]


def _stack(rows):
    return {k: jnp.asarray(v) for k, v in collate(rows).items()}


def pack(examples, seq_len):
    return [collate_row([examples[i] for i in row], seq_len) for row in
            pack_rows([len(e.input_ids) for e in examples], seq_len, range(len(examples)))]


def test_packed_equals_padded_apart():
    examples = _examples()
    packed = pack(examples, seq_len=64)
    assert len(packed) == 1                         # 61 tokens fit one row of 64
    apart = [pack([ex], seq_len=64)[0] for ex in examples]
    np.testing.assert_array_equal(packed[0]["segment_ids"][:61], np.repeat([1, 2, 3, 4], [17, 9, 30, 5]))
    assert packed[0]["positions"][17] == 0 and packed[0]["positions"][25] == 8

    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    def summed(p, batch):
        return losses.cross_entropy_sums(nnx.merge(graphdef, p), batch, chunk=16)

    grad = jax.jit(jax.value_and_grad(summed, has_aux=True))
    (loss_packed, n_packed), g_packed = grad(params, _stack(packed))
    (loss_apart, n_apart), g_apart = grad(params, _stack(apart))
    # every example contributes len-1 targets, each counted iff the *target* token is a loss token
    assert float(n_packed) == float(n_apart) == sum(int(e.loss_mask[1:].sum()) for e in examples)
    print(f"packed loss sum {float(loss_packed):.6f}, apart {float(loss_apart):.6f}")
    np.testing.assert_allclose(float(loss_packed), float(loss_apart), atol=1e-5, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_packed), jax.tree.leaves(g_apart)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
