"""sharding.local_batch_fn / local_mesh: a host batch split over this process's 8 CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np

from softvq_jax import sharding


def _apply(params, x):
  """A pytree of outputs: a per-row matmul, an elementwise map and a per-row reduction."""
  h = jnp.tanh(x.reshape(len(x), -1).astype(jnp.float32) @ params["w"])
  return {"h": h, "nested": (x.astype(jnp.int32) * 2, h.sum(axis=1))}


def test_local_batch_fn_equals_a_plain_apply():
  assert len(jax.local_devices()) == 8
  mesh = sharding.local_mesh()
  assert mesh.axis_names == (sharding.LOCAL_AXIS,) and mesh.devices.size == 8
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(12, 5)).astype(np.float32)}
  fn = sharding.local_batch_fn(_apply, params)  # default: the local mesh
  one = sharding.local_batch_fn(_apply, params, sharding.local_mesh(jax.local_devices()[:1]))
  for n in (13, 16, 1):  # padded to 16 over 8 devices, exact, and a single row
    x = rng.integers(0, 256, (n, 2, 2, 3), dtype=np.uint8)
    got, ref, single = fn(x), jax.jit(_apply)(params, x), one(x)
    assert jax.tree.structure(got) == jax.tree.structure(ref)
    for a, b, c in zip(jax.tree.leaves(got), jax.tree.leaves(ref), jax.tree.leaves(single)):
      assert isinstance(a, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
      assert a.shape[0] == n
      np.testing.assert_allclose(a, np.asarray(b), rtol=1e-6, atol=1e-6)
      np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["nested"][0], x.astype(np.int32) * 2)  # exact where exact


def test_local_batch_fn_returns_a_bare_array():
  fn = sharding.local_batch_fn(lambda p, x: x * p, np.float32(3.0))
  x = np.arange(10, dtype=np.float32)
  out = fn(x)
  assert isinstance(out, np.ndarray) and out.shape == (10,)
  np.testing.assert_array_equal(out, x * 3)
