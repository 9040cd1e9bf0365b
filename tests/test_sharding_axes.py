"""A mesh axis that does not divide the dimension it is mapped to is an error, never a silent replication."""
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from oresearcher import sharding


def test_divisible_dimensions_get_every_mapped_axis():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    spec = sharding.logical_to_spec(("activation_batch", "activation_length", "activation_mlp"), mesh, None,
                                    (8, 16, 6))
    assert spec == P(("data", "fsdp"), None, "tensor")


def test_indivisible_batch_names_axis_dimension_and_mesh():
    mesh = sharding.make_mesh({"fsdp": 8})
    with pytest.raises(sharding.IndivisibleAxisError) as e:
        sharding.logical_to_spec(("activation_batch", "activation_length"), mesh, None, (4, 32768))
    msg = str(e.value)
    assert "'fsdp' (size 8)" in msg and "dimension 0 ('activation_batch', size 4)" in msg
    assert "(4, 32768)" in msg and "'fsdp': 8" in msg


def test_second_axis_of_a_pair_that_does_not_divide_is_an_error_too():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    with pytest.raises(sharding.IndivisibleAxisError, match=r"'fsdp' \(size 4\).*already split 2 ways"):
        sharding.logical_sharding(("activation_batch", "activation_length"), mesh, None, (2, 64))


def test_indivisible_heads_and_constraint_inside_jit():
    mesh = sharding.make_mesh({"data": 4, "tensor": 2})
    with pytest.raises(sharding.IndivisibleAxisError, match="'tensor'.*'kv_heads', size 3"):
        sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), mesh, None, (64, 3, 16))

    @jax.jit
    def f(x):
        return sharding.constrain(x, ("activation_batch", "activation_embed")) * 2

    with jax.set_mesh(mesh):
        assert f(jnp.ones((8, 4))).shape == (8, 4)
        with pytest.raises(sharding.IndivisibleAxisError, match="'data' \\(size 4\\).*size 6"):
            f(jnp.ones((6, 4)))


def test_a_single_row_is_replicated():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding.logical_to_spec(("cache_batch", "cache_length"), mesh, None, (1, 128)) == P(None, None)
