"""Input pipeline: bundled photos, folders, ADM crops, determinism, exact resume, process split."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from softvq_jax import data
from softvq_jax.data import preprocess
from softvq_jax.data.sources.photos import EVAL_NAMES, TRAIN_NAMES


def cfg(**kw):
  base = dict(
    name="photos",
    path="",
    eval_path="",
    eval_fraction=0.1,
    random_crop=True,
    random_flip=True,
    num_workers=2,
    prefetch=2,
    eval_crops=2,
  )
  base.update(kw)
  return ml_collections.ConfigDict(base)


def train_data(config=None, **kw):
  args = dict(image_size=32, global_batch=4, seed=0, process_index=0, process_count=1)
  args.update(kw)
  return data.build_train_data(config or cfg(), **args)


def take(d, start, n):
  it = d.iterator(start)
  out = [next(it) for _ in range(n)]
  it.close()
  return out


def test_photos_load_offline_with_the_contract():
  d = train_data()
  assert d.num_examples == len(TRAIN_NAMES) == 9
  (b,) = take(d, 0, 1)
  assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
  assert b["label"].shape == (4,) and b["label"].dtype == np.int32
  assert -1.0 <= b["image"].min() < b["image"].max() <= 1.0
  e = data.build_eval_data(cfg(), image_size=32, batch_size=3)
  batches = list(e.iterator())
  assert e.num_examples == len(EVAL_NAMES) * 2
  assert sum(int(b["mask"].sum()) for b in batches) == 4
  assert all(b["image"].shape == (3, 32, 32, 3) for b in batches)
  assert not batches[-1]["mask"][-1]  # padding row


def test_deterministic_and_seed_dependent():
  a = take(train_data(), 0, 3)
  b = take(train_data(), 0, 3)
  c = take(train_data(seed=1), 0, 3)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_exact_resume_at_any_step():
  full = take(train_data(), 0, 6)
  resumed = take(train_data(), 4, 2)
  for x, y in zip(full[4:], resumed, strict=True):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_two_processes_concatenate_to_the_global_batch():
  whole = take(train_data(global_batch=8), 3, 1)[0]
  parts = [
    take(train_data(global_batch=8, process_index=i, process_count=2), 3, 1)[0] for i in range(2)
  ]
  np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
  assert not np.array_equal(parts[0]["image"], parts[1]["image"])


def test_epochs_visit_every_image_once():
  d = train_data()
  n = d.num_examples
  labels = [d.sample(g)[1] for g in range(2 * n)]
  assert sorted(labels[:n]) == list(range(n)) and sorted(labels[n:]) == list(range(n))
  assert labels[:n] != labels[n:]  # reshuffled each epoch


def test_adm_crops():
  rng = np.random.default_rng(0)
  # A horizontal ramp: a crop's value span tells how much of the short side it covers.
  ramp = np.tile(np.linspace(0, 255, 400)[None, :, None], (400, 1, 3)).astype(np.uint8)
  image = Image.fromarray(ramp)
  fractions = []
  for _ in range(60):
    crop = preprocess.random_crop_arr(image, 64, rng)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    row = crop[32, :, 0].astype(float)
    fractions.append((row[-1] - row[0]) / 255 * 64 / 63)
  # Short side resized to U{64..80}: every crop covers 80-100% of it, both ends get drawn.
  assert 0.78 <= min(fractions) < 0.84 and 0.95 < max(fractions) <= 1.02
  center = preprocess.center_crop_arr(image, 64)[32, :, 0].astype(float)
  assert (center[0] + center[-1]) / 2 == pytest.approx(127.5, abs=3)
  # Center crop of an image already at size is the identity.
  arr = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
  np.testing.assert_array_equal(preprocess.center_crop_arr(Image.fromarray(arr), 64), arr)
  # Small images are upscaled, not rejected.
  assert preprocess.center_crop_arr(Image.fromarray(arr[:10, :12]), 64).shape == (64, 64, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "LA"])
def test_any_image_mode_becomes_rgb(mode):
  img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
  img = (
    img.convert(mode)
    if mode != "I;16"
    else Image.fromarray((np.random.default_rng(0).integers(0, 65535, (40, 40))).astype(np.uint16))
  )
  out = preprocess.center_crop_arr(img, 32)
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def _write_folder(root, n=6):
  rng = np.random.default_rng(0)
  for i in range(n):
    cls = root / f"class_{i % 2}"
    cls.mkdir(parents=True, exist_ok=True)
    mode = ["RGB", "L", "CMYK"][i % 3]
    arr = rng.integers(0, 255, (48 + i, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(cls / f"img{i}.{'jpg' if mode != 'L' else 'png'}")
  (root / "class_0" / "broken.jpg").write_bytes(b"not a jpeg at all")


def test_folder_dataset_skips_broken_files_and_labels_classes(tmp_path):
  _write_folder(tmp_path)
  c = cfg(name="folder", path=str(tmp_path), eval_fraction=0.2)
  d = train_data(c, global_batch=8)
  assert d.num_examples == 6  # 7 files, 1-2 held out
  batches = take(d, 0, 3)
  assert all(b["image"].shape == (8, 32, 32, 3) for b in batches)
  assert set(np.concatenate([b["label"] for b in batches]).tolist()) <= {0, 1}
  assert d.num_skipped >= 1  # the broken file was hit and replaced deterministically
  again = take(train_data(c, global_batch=8), 0, 3)
  for x, y in zip(batches, again, strict=True):
    np.testing.assert_array_equal(x["image"], y["image"])
  e = data.build_eval_data(c, image_size=32, batch_size=4)
  assert e.num_examples == 1


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    train_data(cfg(name="folder", path=str(tmp_path / "nope")))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no images"):
    train_data(cfg(name="folder", path=str(tmp_path / "empty")))
  with pytest.raises(ValueError, match="unknown data.name"):
    train_data(cfg(name="cifar"))
