"""The flat-drawn initialisers give Flax's and JAX's values exactly, so checkpoints and seeds are unchanged."""

import jax
import numpy as np
import pytest
from flax import nnx

from embodied.nn import init


@pytest.mark.parametrize("shape", [(3, 5), (48, 16), (2, 2, 12, 16), (3, 3, 16, 64), (1, 1, 48, 32), (256, 64)])
def test_lecun_normal_and_normal_draw_the_values_of_flax_and_jax(shape):
    key = jax.random.key(sum(shape))
    expected = nnx.initializers.lecun_normal()(key, shape)
    drawn = init.lecun_normal(key, shape)
    assert drawn.shape == expected.shape and drawn.dtype == expected.dtype
    np.testing.assert_array_equal(drawn, expected)
    np.testing.assert_array_equal(init.normal(key, shape), jax.random.normal(key, shape))


def test_linear_draws_nnx_linears_parameters():
    ours, theirs = init.Linear(12, 7, rngs=nnx.Rngs(3)), nnx.Linear(12, 7, rngs=nnx.Rngs(3))
    jax.tree.map(np.testing.assert_array_equal, nnx.state(ours), nnx.state(theirs))


def test_lecun_normal_refuses_a_vector():
    with pytest.raises(ValueError, match="at least 2 axes"):
        init.lecun_normal(jax.random.key(0), (5,))
