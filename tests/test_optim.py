"""Learning-rate schedule, weight-decay mask and the optimizers."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from softvq_jax.training import optim


def test_warmup_then_cosine_to_min():
  s = optim.lr_schedule(1e-3, 1000, 100, warmup_init_lr=1e-5, min_lr_ratio=0.1)
  assert float(s(0)) == pytest.approx(1e-5)
  assert float(s(50)) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
  # timm-style: cosine evaluated at the absolute step once warm-up is over.
  t = 400
  expected = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * t / 1000))
  assert float(s(t)) == pytest.approx(expected, rel=1e-6)
  assert float(s(1000)) == pytest.approx(1e-4, rel=1e-6)
  values = np.array([float(s(i)) for i in range(100, 1001, 50)])
  assert np.all(np.diff(values) <= 1e-12)


def test_constant_schedule():
  s = optim.lr_schedule(2e-4, 100, 0, kind="constant")
  assert float(s(0)) == float(s(99)) == pytest.approx(2e-4)


def test_decay_mask_excludes_biases_and_vectors():
  params = {
    "dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
    "norm": {"scale": jnp.ones(4)},
    "codebook": jnp.ones((2, 5, 3)),
  }
  mask = optim.decay_mask(params)
  assert mask == {
    "dense": {"kernel": True, "bias": False},
    "norm": {"scale": False},
    "codebook": True,
  }


def test_adamw_decays_only_masked_and_clips():
  params = {"w": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  tx = optim.make_optimizer("adamw", 0.1, b1=0.9, b2=0.95, weight_decay=0.5, grad_clip=1.0)
  state = tx.init(params)
  zero = {"w": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}
  updates, _ = tx.update(zero, state, params)
  assert np.allclose(updates["w"], -0.1 * 0.5) and np.allclose(updates["bias"], 0.0)
  # Clipping: a huge gradient gives the same Adam step direction and a finite update.
  big = {"w": jnp.full((2, 2), 1e6), "bias": jnp.full(2, 1e6)}
  clipped = optax.clip_by_global_norm(1.0).update(big, optax.EmptyState())[0]
  assert float(optax.global_norm(clipped)) == pytest.approx(1.0, rel=1e-5)


def test_plain_adam_has_no_decay():
  params = {"w": jnp.ones((2, 2))}
  tx = optim.make_optimizer("adam", 0.1, b1=0.9, b2=0.95, weight_decay=0.5)
  updates, _ = tx.update({"w": jnp.zeros((2, 2))}, tx.init(params), params)
  assert np.allclose(updates["w"], 0.0)
