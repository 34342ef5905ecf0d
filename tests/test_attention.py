"""models/attention.py: the per-head CPU kernel equals jax.nn.dot_product_attention.

The per-head loop is a different schedule of the same arithmetic (one (B, T, T) score block per
step instead of the whole (B, H, T, T) tensor), so outputs and gradients must match XLA's
attention to float32 round-off, and the ViT must give the same result under either kernel.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.models import attention, vit


def _qkv(shape=(3, 17, 4, 8), dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  return tuple(jax.random.normal(k, shape, dtype) for k in keys)


def test_per_head_equals_xla_forward_and_gradients():
  q, k, v = _qkv()
  ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
  ours = lambda q, k, v: attention.attention(q, k, v, "per_head")
  np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), rtol=1e-5, atol=1e-6)
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  g_ref = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  g_ours = jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_ours, g_ref, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_per_head_bf16_keeps_dtype_and_f32_softmax():
  q, k, v = _qkv(dtype=jnp.bfloat16)
  out = attention.attention(q, k, v, "per_head")
  assert out.dtype == jnp.bfloat16 and out.shape == q.shape
  f32 = jax.nn.dot_product_attention(*(a.astype(jnp.float32) for a in (q, k, v)))
  np.testing.assert_allclose(out.astype(jnp.float32), f32, atol=3e-2)


def test_default_on_cpu_is_per_head(monkeypatch):
  calls = []
  real = attention._per_head
  monkeypatch.setattr(attention, "_per_head", lambda *a: calls.append(1) or real(*a))
  attention.attention(*_qkv())
  assert calls == [1]  # the tests run on CPU: "" picks the per-head kernel
  attention.attention(*_qkv(), impl="xla")
  assert calls == [1]


def test_unknown_impl_is_refused():
  with pytest.raises(ValueError, match="flash.*per_head"):
    attention.attention(*_qkv(), impl="flash")


def test_vit_attention_same_under_either_kernel():
  x = jax.random.normal(jax.random.key(1), (2, 9, 32))
  make = lambda i: vit.Attention(num_heads=4, attn_impl=i)
  params = make("xla").init(jax.random.key(2), x)
  np.testing.assert_allclose(
    make("per_head").apply(params, x), make("xla").apply(params, x), rtol=1e-5, atol=1e-6
  )
