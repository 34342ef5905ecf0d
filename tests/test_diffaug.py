"""DiffAugment invariants: identity at prob 0, per-batch decisions, translation = shift + zero fill,
cutout area against a numpy version of the reference's clamped index scatter, colour ops on
constant images, dtypes, determinism, jit and differentiability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.objectives import diffaug as da

POLICY = "color,translation,cutout_0.2"


def key(seed):
  """RBG keys: the code is PRNG-agnostic and threefry's normal() compiles slowly on CPU."""
  return jax.random.key(seed, impl="rbg")


def images(b=4, s=16, seed=0):
  return jax.random.uniform(key(seed), (b, s, s, 3), minval=-1.0, maxval=1.0)


def test_parse_policy():
  assert da.parse_policy(POLICY) == [("color", 0.0), ("translation", 0.0), ("cutout", 0.2)]
  assert da.parse_policy("") == []
  assert da.parse_policy("cutout_0.5") == [("cutout", 0.5)]
  with pytest.raises(ValueError, match="unknown"):
    da.parse_policy("color,flip")
  with pytest.raises(ValueError):
    da.parse_policy("cutout_x")


def test_prob_zero_and_empty_policy_are_identity():
  x = images()
  np.testing.assert_array_equal(np.asarray(da.diff_augment(x, key(1), POLICY, 0.0)), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(da.diff_augment(x, key(1), "", 1.0)), np.asarray(x))


def test_decision_is_per_batch():
  """With prob 0.5 a group changes either every sample or none; about half of the keys apply it."""
  x = images(b=6)
  f = jax.jit(lambda k, p: da.diff_augment(x, k, "color", p))  # traced prob
  changed = []
  for i in range(64):
    y = np.asarray(f(key(100 + i), 0.5))
    per_sample = np.any(y != np.asarray(x), axis=(1, 2, 3))
    assert per_sample.all() or not per_sample.any()
    changed.append(per_sample.all())
  assert 16 <= sum(changed) <= 48  # Binomial(64, 0.5): P(outside) < 1e-4
  # prob 1: always applied; a traced prob 0: never.
  y = np.asarray(f(key(3), 1.0))
  assert np.all(np.any(y != np.asarray(x), axis=(1, 2, 3)))
  np.testing.assert_array_equal(np.asarray(f(key(3), 0.0)), np.asarray(x))


def np_shift(img, th, tw):
  """out[i, j] = img[i + th, j + tw], zero outside (the reference's padded index gather)."""
  h, w = img.shape[:2]
  out = np.zeros_like(img)
  for i in range(h):
    for j in range(w):
      if 0 <= i + th < h and 0 <= j + tw < w:
        out[i, j] = img[i + th, j + tw]
  return out


def test_translate_matches_numpy_shift():
  x = images(b=3, s=8)
  t_h, t_w = [2, -1, 0], [-3, 1, 0]
  y = np.asarray(da.translate(x, jnp.array(t_h), jnp.array(t_w)))
  xn = np.asarray(x)
  for b in range(3):
    np.testing.assert_array_equal(y[b], np_shift(xn[b], t_h[b], t_w[b]))


def test_rand_translation_is_a_bounded_shift():
  s = 16
  x = images(b=8, s=s)
  y = np.asarray(jax.jit(lambda k: da.rand_translation(x, k))(key(5)))
  smax = int(s * 0.125 + 0.5)  # 2
  xn = np.asarray(x)
  shifts = []
  for b in range(8):
    found = [
      (th, tw)
      for th in range(-smax, smax + 1)
      for tw in range(-smax, smax + 1)
      if np.array_equal(y[b], np_shift(xn[b], th, tw))
    ]
    assert len(found) == 1
    shifts.append(found[0])
  assert len(set(shifts)) > 1  # per-sample parameters


def np_reference_cutout_mask(o_h, o_w, size, h, w):
  """The reference's algorithm: clamp the square's indices to the image, scatter zeros."""
  mask = np.ones((len(o_h), h, w))
  for b in range(len(o_h)):
    rows = np.clip(np.arange(size[0]) + o_h[b] - size[0] // 2, 0, h - 1)
    cols = np.clip(np.arange(size[1]) + o_w[b] - size[1] // 2, 0, w - 1)
    mask[b][np.ix_(rows, cols)] = 0
  return mask


@pytest.mark.parametrize("s,ratio", [(16, 0.2), (16, 0.5), (15, 0.2), (8, 0.5)])
def test_cutout_area_and_reference_mask(s, ratio):
  b = 16
  x = jnp.ones((b, s, s, 3))
  k = key(7)
  y = np.asarray(da.rand_cutout(x, k, ratio))
  o_h, o_w, size = da.cutout_offsets(k, b, s, s, ratio)
  o_h, o_w = np.asarray(o_h), np.asarray(o_w)
  assert size == (int(s * ratio + 0.5),) * 2
  assert o_h.min() >= 0 and o_h.max() <= s - size[0] % 2
  ref = np_reference_cutout_mask(o_h, o_w, size, s, s)
  np.testing.assert_array_equal(y, np.repeat(ref[..., None], 3, axis=-1))
  # Zeroed area = the square clipped to the image, per sample.
  for i in range(b):
    lo_h, lo_w = o_h[i] - size[0] // 2, o_w[i] - size[1] // 2
    rows = min(lo_h + size[0], s) - max(lo_h, 0)
    cols = min(lo_w + size[1], s) - max(lo_w, 0)
    assert (y[i, ..., 0] == 0).sum() == rows * cols


def test_color_on_constant_images():
  b = 8
  c = jnp.linspace(-0.8, 0.8, b)[:, None, None, None] * jnp.ones((b, 6, 6, 3))
  # Contrast and saturation leave a constant image unchanged; brightness adds U(-.5, .5).
  np.testing.assert_allclose(np.asarray(da.rand_contrast(c, key(1))), np.asarray(c), atol=1e-6)
  np.testing.assert_allclose(np.asarray(da.rand_saturation(c, key(1))), np.asarray(c), atol=1e-6)
  y = np.asarray(da.rand_color(c, key(2)))
  delta = y - np.asarray(c)
  assert np.allclose(delta, delta[:, :1, :1, :1], atol=1e-6)  # constant per sample
  d = delta[:, 0, 0, 0]
  assert np.all(np.abs(d) <= 0.5) and np.std(d) > 0.05


def test_saturation_and_contrast_factors():
  b = 64
  x = images(b=b, s=4, seed=3)
  xn = np.asarray(x, np.float64)
  y = np.asarray(da.rand_saturation(x, key(4)), np.float64)
  m = xn.mean(-1, keepdims=True)
  f = ((y - m) * (xn - m)).sum((1, 2, 3)) / ((xn - m) ** 2).sum((1, 2, 3))  # per-sample factor
  np.testing.assert_allclose(y, (xn - m) * f[:, None, None, None] + m, atol=1e-5)
  assert f.min() >= 0 and f.max() <= 2 and f.max() - f.min() > 1.0
  y = np.asarray(da.rand_contrast(x, key(5)), np.float64)
  m = xn.mean((1, 2, 3), keepdims=True)
  f = ((y - m) * (xn - m)).sum((1, 2, 3)) / ((xn - m) ** 2).sum((1, 2, 3))
  np.testing.assert_allclose(y, (xn - m) * f[:, None, None, None] + m, atol=1e-5)
  assert f.min() >= 0.5 and f.max() <= 1.5 and f.max() - f.min() > 0.5
  y = np.asarray(da.rand_brightness(x, key(6)), np.float64)
  d = (y - xn).reshape(b, -1)
  assert np.allclose(d, d[:, :1], atol=1e-6) and np.abs(d).max() <= 0.5


def test_shapes_dtypes_determinism_jit_and_grad():
  x = images(b=2, s=16)
  aug = lambda x, k: da.diff_augment(x, k, POLICY, 1.0)

  @jax.jit
  def fwd_grad(x, k):
    y, vjp = jax.vjp(lambda x: aug(x, k), x)
    return y, vjp(2 * y)[0]  # the gradient of sum(y ** 2)

  (y1, g), (y2, _) = fwd_grad(x, key(9)), fwd_grad(x, key(9))
  np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
  assert not np.array_equal(np.asarray(fwd_grad(x, key(10))[0]), np.asarray(y1))
  assert y1.shape == x.shape and y1.dtype == x.dtype
  yb = jax.eval_shape(aug, x.astype(jnp.bfloat16), key(9))
  assert yb.dtype == jnp.bfloat16 and yb.shape == x.shape
  assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0
  # Cutout gradients are 0 exactly where the pixel was dropped.
  g, y = jax.jit(
    lambda x: (
      jax.grad(lambda x: jnp.sum(da.rand_cutout(x, key(11), 0.5)))(x),
      da.rand_cutout(jnp.ones_like(x), key(11), 0.5),
    )
  )(x)
  np.testing.assert_array_equal(np.asarray(g), np.asarray(y))
