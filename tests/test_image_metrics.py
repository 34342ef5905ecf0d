"""PSNR/SSIM/MSE against scikit-image, uint8 conversion, grids and PNG writing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from softvq_jax.evaluation import image_metrics
from softvq_jax.utils import images


def _pair(seed, dtype):
  rng = np.random.default_rng(seed)
  a = skimage.data.astronaut()[100:164, 200:272]
  b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
  if dtype == "float":
    return a / 255.0, b / 255.0, 1.0
  return a, b, 255.0


@pytest.mark.parametrize("dtype", ["uint8", "float"])
def test_psnr_and_ssim_match_skimage(dtype):
  pairs = [_pair(s, dtype) for s in range(3)]
  x = np.stack([p[0] for p in pairs])
  y = np.stack([p[1] for p in pairs])
  r = pairs[0][2]
  ssim = np.asarray(image_metrics.ssim(x, y, r))
  psnr = np.asarray(image_metrics.psnr(x, y, r))
  for i, (a, b, _) in enumerate(pairs):
    ref = structural_similarity(
      a,
      b,
      data_range=r,
      channel_axis=-1,
      gaussian_weights=True,
      sigma=1.5,
      use_sample_covariance=False,
    )
    assert ssim[i] == pytest.approx(ref, abs=2e-5)
    assert psnr[i] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=r), abs=1e-4)
  np.testing.assert_allclose(image_metrics.ssim(x, x, r), 1.0, atol=1e-6)


def test_data_range_matters():
  """The reference's data_range=2.0 for [0, 1] images inflates SSIM; ours uses the true range."""
  a, b, _ = _pair(0, "float")
  right = float(image_metrics.ssim(a[None], b[None], 1.0)[0])
  inflated = float(image_metrics.ssim(a[None], b[None], 2.0)[0])
  assert inflated > right + 0.02


def test_to_uint8_rounds_like_the_reference():
  x = np.array([-1.0, -0.5, 0.0, 0.999, 1.0, 2.0, -3.0])
  expected = np.clip(127.5 * x + 128, 0, 255).astype(np.uint8)  # .to(uint8) truncation
  np.testing.assert_array_equal(image_metrics.to_uint8(x), expected)
  assert image_metrics.to_uint8(np.array([0.0]))[0] == 128
  assert image_metrics.to_uint8 is images.to_uint8  # one implementation, ADM by default


def test_to_uint8_modes_host_and_device():
  x = np.random.default_rng(0).uniform(-1.2, 1.2, (4000,)).astype(np.float32)
  # Each mode's exact formula (float32 throughout), as its callers had it.
  adm = np.clip(127.5 * x + 128.0, 0, 255).astype(np.uint8)
  rnd = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(images.to_uint8(x), adm)
  np.testing.assert_array_equal(images.to_uint8(x, rounding="round"), rnd)
  assert np.abs(adm.astype(int) - rnd.astype(int)).max() <= 1
  for rounding, want in (("adm", adm), ("round", rnd)):
    dev = jax.jit(lambda v, r=rounding: images.to_uint8(v, jnp, rounding=r))(jnp.asarray(x))
    assert dev.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(dev), want)  # host and device agree
  u8 = np.arange(256, dtype=np.uint8)
  assert images.to_uint8(u8) is u8 and images.to_uint8(u8, rounding="round") is u8
  assert isinstance(images.to_uint8(jnp.asarray(x)), np.ndarray)  # xp=np: a host array
  with pytest.raises(ValueError, match="rounding"):
    images.to_uint8(x, rounding="floor")


def test_grid_and_atomic_png(tmp_path):
  ims = np.linspace(-1, 1, 5 * 8 * 6 * 3).reshape(5, 8, 6, 3)
  grid = images.make_grid(ims, ncols=2, pad=1)
  assert grid.shape == (3 * 9 + 1, 2 * 7 + 1, 3) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[1:9, 8:14], images.to_uint8(ims[1], rounding="round"))
  pairs = images.side_by_side(ims[:2], -ims[:2], ncols=2)
  np.testing.assert_array_equal(pairs[2:10, 10:16], images.to_uint8(-ims[0], rounding="round"))
  path = images.save_png(tmp_path / "a" / "g.png", grid)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)
  assert [p.name for p in path.parent.iterdir()] == ["g.png"]
