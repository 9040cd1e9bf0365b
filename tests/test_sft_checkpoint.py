"""A train state saved on one mesh restores onto another (target shardings), values intact, and training goes on
identically; metrics.jsonl is truncated to the restored step on resume."""
import json

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from oresearcher import checkpoint, metrics, optim, sft, sharding
from oresearcher.model import PRESETS, Decoder


def _trainer(mesh):
    model = Decoder(PRESETS["tiny"], rngs=nnx.Rngs(0))
    sharding.shard_model(model, mesh)
    c = ConfigDict(dict(lr=1e-2, warmup_fraction=0.0, warmup_steps=1, final_lr_fraction=0.1, b1=0.9, b2=0.95,
                        eps=1e-8, weight_decay=0.0, grad_clip=1.0))
    tx, schedule = optim.make_optimizer(c, 10)
    return sft.make_train_step(model, tx, schedule, mesh, loss_chunk=16, batch_shape=(4, 32))


def _batch(seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 256, size=(4, 33)).astype(np.int32)
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": rng.random((4, 32)) < 0.5,
            "positions": np.tile(np.arange(32, dtype=np.int32), (4, 1)), "segment_ids": np.ones((4, 32), np.int32)}


def test_restore_onto_a_different_mesh(tmp_path):
    devices = jax.devices()
    a = _trainer(sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices[:8]))
    state, _ = a.step(a.state, a.put_batch(_batch(0)))
    mu = state["opt_state"][1][0].mu["embed"]
    assert mu.sharding.spec == state["params"]["embed"].sharding.spec != jax.sharding.PartitionSpec(None, None)
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, state, {"epoch": 0, "index": 4}, wait=True)
    state_a, next_a = a.step(state, a.put_batch(_batch(1)))

    b = _trainer(sharding.make_mesh({"fsdp": 4}, devices[:4]))
    restored, data_state = ckpt.restore(1, checkpoint.abstract_like(b.state, b.state_shardings))
    ckpt.close()
    assert data_state == {"epoch": 0, "index": 4}
    wq = restored["params"]["layers"]["wq"]
    assert wq.sharding == b.state_shardings["params"]["layers"]["wq"] and len(wq.sharding.device_set) == 4
    state_b, next_b = b.step(restored, b.put_batch(_batch(1)))
    assert abs(float(next_a["loss"]) - float(next_b["loss"])) < 1e-5
    np.testing.assert_allclose(np.asarray(state_a["params"]["embed"]), np.asarray(state_b["params"]["embed"]),
                               atol=1e-6)


def test_metrics_writer_truncates_to_the_resumed_step(tmp_path):
    w = metrics.MetricsWriter(tmp_path, 10, progress=False)
    for s in range(1, 6):
        w.write(s, {"loss": float(s)})
    w.close()
    w = metrics.MetricsWriter(tmp_path, 10, start_step=3, progress=False)
    w.write(4, {"loss": 40.0})
    w.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
