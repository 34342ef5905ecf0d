"""Patch-kernel PI-resize and position-grid resampling (timm semantics, numpy)."""

import numpy as np
import pytest

from softvq_jax.weights import resample


def test_resize_matrix_rows_sum_to_one_and_identity():
  for n_in, n_out in [(14, 16), (37, 16), (16, 16), (5, 9)]:
    w = resample.resize_matrix(n_in, n_out)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
  np.testing.assert_allclose(resample.resize_matrix(7, 7), np.eye(7), atol=1e-12)


def test_matches_pil_bicubic_on_an_image():
  """torch's antialiased bicubic is PIL's filter; compare with PIL on a float image."""
  from PIL import Image

  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (37, 37)).astype(np.float32)
  for size in (16, 50):
    ours = resample.resize_2d(x, (size, size))
    pil = np.asarray(Image.fromarray(x, mode="F").resize((size, size), Image.BICUBIC))
    np.testing.assert_allclose(ours, pil, atol=1e-5)


def test_pi_resize_preserves_patch_embeddings():
  """<resize(x), w_new> == <x, w_old> for old-size patches x when upsampling 14 -> 16."""
  rng = np.random.default_rng(0)
  w_old = rng.normal(size=(14, 14, 3, 8))
  w_new = resample.resample_patch_kernel(w_old, (16, 16))
  assert w_new.shape == (16, 16, 3, 8)
  x = rng.normal(size=(4, 14, 14, 3))
  x_up = np.stack([resample.resize_2d(xi, (16, 16)) for xi in x])
  np.testing.assert_allclose(
    np.einsum("bhwc,hwco->bo", x_up, w_new),
    np.einsum("bhwc,hwco->bo", x, w_old),
    rtol=1e-6,
    atol=1e-8,
  )
  np.testing.assert_array_equal(resample.resample_patch_kernel(w_old, (14, 14)), w_old)


def test_pos_embed_keeps_prefix_and_smooth_functions():
  n, e = 37, 4
  yy, xx = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
  grid = np.stack([np.ones_like(xx), xx, yy, xx * yy], -1).reshape(1, n * n, e)
  pos = np.concatenate([np.full((1, 1, e), 7.0), grid], 1).astype(np.float32)
  out = resample.resample_pos_embed(pos, (16, 16))
  assert out.shape == (1, 1 + 256, e)
  np.testing.assert_array_equal(out[:, 0], pos[:, 0])
  new = out[0, 1:].reshape(16, 16, e)
  np.testing.assert_allclose(new[..., 0], 1.0, atol=1e-6)  # constants stay constant
  assert np.all(np.diff(new[..., 1], axis=1) > 0) and np.all(np.diff(new[..., 2], axis=0) > 0)
  with pytest.raises(ValueError, match="not square"):
    resample.resample_pos_embed(pos[:, :-1], (16, 16))
