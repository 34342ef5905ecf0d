"""The training crop with only its window resized (data.exact_resize=False, data/window.py):
same geometry and random draws as the whole-image resize, values within the documented bound,
Pillow's pass order followed, the exact path kept when the order is unknown."""

import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from softvq_jax import data
from softvq_jax.data import preprocess, window
from softvq_jax.data.pipeline import TrainData
from softvq_jax.data.sources.decode import decode_image
from softvq_jax.data.sources.photos import EVAL_NAMES, TRAIN_NAMES, PhotoSource, _load

MAX_LEVELS = 2  # data/window.py: at most 2 uint8 levels ...
MAX_FRACTION = 1e-3  # ... on ~1.6-4.7e-4 of the values (bounded here with margin)


def _noise(rng, h, w):
  return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _images():
  """The photos (smooth and high-frequency), noise of every aspect (the worst case for
  rounding), tiny images (upscaled) and very tall ones (Pillow 13 resizes them vertically
  first)."""
  rng = np.random.default_rng(0)
  images = [Image.fromarray(_load(n)) for n in TRAIN_NAMES + EVAL_NAMES]
  images += [_noise(rng, *map(int, rng.integers(40, 600, 2))) for _ in range(8)]
  images += [_noise(rng, 12, 30), _noise(rng, 30, 9)]  # smaller than every crop: upscaled
  images += [_noise(rng, 700, 60), _noise(rng, 900, 300), _noise(rng, 60, 700)]
  return images


def _both(image, s, seed):
  """(exact, window) training crops of one image under the same draws."""
  out = []
  for exact in (True, False):
    g = np.random.default_rng(seed)
    short = preprocess.random_short_side(s, g)
    out.append(preprocess.crop_at_short_side(image, s, short, g, exact=exact).astype(int))
  return out


def test_the_window_crop_is_the_whole_image_crop_within_two_levels():
  rng = np.random.default_rng(1)
  differing = total = 0
  orders = set()
  for image in _images():
    for s in (16, 48, 128):
      seed = int(rng.integers(1 << 30))
      exact, win = _both(image, s, seed)
      assert win.shape == exact.shape == (s, s, 3)
      d = np.abs(exact - win)
      assert d.max() <= MAX_LEVELS, (image.size, s, d.max())
      differing, total = differing + int((d > 0).sum()), total + d.size
      short = preprocess.random_short_side(s, np.random.default_rng(seed))
      halved, size = preprocess._halve(image, short)
      orders.add(window.pass_order()(*halved.size, *preprocess.resized_size(size, short)))
  assert differing / total <= MAX_FRACTION, differing / total
  assert orders == {True, False}  # both pass orders were exercised


def test_the_bound_detects_a_crop_one_pixel_off():
  """The check above can fail: the exact crop moved by one pixel breaks the 2-level bound."""
  image = _noise(np.random.default_rng(2), 300, 400)
  exact, _ = _both(image, 64, 7)
  g = np.random.default_rng(7)
  short = preprocess.random_short_side(64, g)
  halved, size = preprocess._halve(image, short)
  full = np.asarray(halved.resize(preprocess.resized_size(size, short), Image.BICUBIC)).astype(int)
  y, x = int(g.integers(0, full.shape[0] - 63)), int(g.integers(0, full.shape[1] - 63))
  np.testing.assert_array_equal(full[y : y + 64, x : x + 64], exact)
  x1 = x + 1 if x + 65 <= full.shape[1] else x - 1
  assert np.abs(full[y : y + 64, x1 : x1 + 64] - exact).max() > MAX_LEVELS


def test_the_pass_order_rule_is_the_installed_pillows():
  """For random shapes, the rule found names the single-axis order that equals Pillow's own
  whole-image resize."""
  rule = window.pass_order()
  assert rule is not None, Image.__version__
  rng = np.random.default_rng(3)
  for _ in range(12):
    w, h = (int(v) for v in rng.integers(20, 300, 2))
    nw, nh = (int(v) for v in rng.integers(8, 200, 2))
    image = _noise(rng, h, w)
    full = np.asarray(image.resize((nw, nh), Image.BICUBIC))
    first, second = (True, False) if rule(w, h, nw, nh) else (False, True)
    one = window._one_pass(image, first, nw if first else nh)
    two = np.asarray(window._one_pass(one, second, nw if second else nh))
    np.testing.assert_array_equal(two, full, err_msg=str((w, h, nw, nh)))


def test_an_unknown_pass_order_falls_back_to_the_exact_crop(monkeypatch):
  monkeypatch.setattr(window, "pass_order", lambda: None)
  image = _noise(np.random.default_rng(4), 200, 260)
  exact, win = _both(image, 64, 11)
  np.testing.assert_array_equal(win, exact)


def test_a_drafted_jpeg_keeps_its_geometry_in_the_window_crop():
  """data.jpeg_draft + window: the drafted image is resized to the full decode's geometry."""
  photo = np.asarray(Image.fromarray(_load("retina")).convert("RGB"))  # 1411 px: halved for 64
  buf = io.BytesIO()
  Image.fromarray(photo).save(buf, "JPEG", quality=95)
  for s in (64, 128):
    drafted = decode_image(buf.getvalue(), draft=s)
    assert drafted.info[preprocess.DRAFT_INFO][2] > 1  # really drafted
    exact, win = _both(drafted, s, 5)
    assert np.abs(exact - win).max() <= MAX_LEVELS


@pytest.mark.parametrize("exact", [True, False])
def test_data_exact_resize_reaches_the_training_batches(exact):
  cfg = dict(name="photos", num_workers=2, uint8_transfer=True, exact_resize=exact)
  d = data.build_train_data(ml_collections.ConfigDict(cfg), image_size=48, global_batch=9, seed=0)
  assert isinstance(d, TrainData) and d.exact_resize is exact
  kw = dict(image_size=48, global_batch=9, seed=0, uint8=True, exact_resize=True)
  want = TrainData(PhotoSource("train"), **kw).batch(0)["image"].astype(int)
  d_levels = np.abs(want - d.batch(0)["image"].astype(int))
  if exact:
    assert d_levels.max() == 0
  else:
    assert 0 < d_levels.max() <= MAX_LEVELS


def test_the_center_crop_for_training_follows_exact_resize_too():
  rng = np.random.default_rng(6)
  for image in (_noise(rng, 300, 500), Image.fromarray(_load("coffee"))):
    exact = preprocess.center_crop_arr(image, 96).astype(int)
    win = preprocess.center_crop_arr(image, 96, exact=False).astype(int)
    assert np.abs(exact - win).max() <= MAX_LEVELS


def test_flip_left_right_is_the_mirror_image():
  rng = np.random.default_rng(8)
  for arr in (rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), rng.random((4, 6, 3), np.float32)):
    out = preprocess.flip_left_right(arr)
    np.testing.assert_array_equal(out, arr[:, ::-1])
    assert out.flags.c_contiguous and out.dtype == arr.dtype
