"""ADM sample/reference `.npz` batches: the layout ADM reads, atomic writes, clear errors."""

import zipfile

import numpy as np
import pytest

from softvq_jax.evaluation import adm_npz


def _images(n, h=8, w=6, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _adm_header(path, key="arr_0"):
  """What ADM's open_npz_array does: read the .npy magic/header straight from the zip member."""
  with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
    version = np.lib.format.read_magic(f)
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    data = f.read()
  return version, shape, fortran, dtype, data


def test_save_samples_npz_is_adm_readable(tmp_path):
  imgs = _images(5)
  path = adm_npz.save_samples_npz(tmp_path / "samples.npz", imgs)
  with np.load(path) as data:
    assert data.files == ["arr_0"]
    np.testing.assert_array_equal(data["arr_0"], imgs)
  version, shape, fortran, dtype, raw = _adm_header(path)
  assert version == (1, 0) and shape == imgs.shape and not fortran and dtype == np.uint8
  np.testing.assert_array_equal(np.frombuffer(raw, np.uint8).reshape(shape), imgs)
  assert [p.name for p in tmp_path.iterdir()] == ["samples.npz"]  # no temporary left behind


def test_streaming_writer_with_labels(tmp_path):
  imgs, labels = _images(7), np.arange(7) % 3
  with adm_npz.SampleNpzWriter(tmp_path / "s.npz", 7, (8, 6, 3), with_labels=True) as w:
    for i in range(0, 7, 3):
      w.write(imgs[i : i + 3], labels[i : i + 3])
  with np.load(tmp_path / "s.npz") as data:
    np.testing.assert_array_equal(data["arr_0"], imgs)
    np.testing.assert_array_equal(data["arr_1"], labels)
  batches = list(adm_npz.iter_npz_batches(tmp_path / "s.npz", 3, start=2))
  assert [len(b) for b in batches] == [3, 2]
  np.testing.assert_array_equal(np.concatenate(batches), imgs[2:])


def test_writer_failures_leave_no_file(tmp_path):
  path = tmp_path / "s.npz"
  with pytest.raises(adm_npz.AdmNpzError, match="3 images written, expected 4"):
    with adm_npz.SampleNpzWriter(path, 4, (8, 6, 3)) as w:
      w.write(_images(3))
  with pytest.raises(RuntimeError):
    with adm_npz.SampleNpzWriter(path, 4, (8, 6, 3)) as w:
      w.write(_images(2))
      raise RuntimeError("sampler crashed")
  assert list(tmp_path.iterdir()) == []
  with pytest.raises(adm_npz.AdmNpzError, match="uint8"):
    adm_npz.save_samples_npz(path, _images(2).astype(np.float32))
  with pytest.raises(adm_npz.AdmNpzError, match="NHWC"):
    adm_npz.save_samples_npz(path, _images(2)[..., :1])
  with adm_npz.SampleNpzWriter(path, 2, (8, 6, 3)) as w:
    with pytest.raises(adm_npz.AdmNpzError, match="more than num_samples"):
      w.write(_images(3))
    w.write(_images(2))
  assert list(tmp_path.iterdir()) == [path]


def _stats(rng, d, d_s):
  a, b = rng.normal(size=(d, d)), rng.normal(size=(d_s, d_s))
  return {
    "mu": rng.normal(size=d),
    "sigma": a @ a.T,
    "mu_s": rng.normal(size=d_s),
    "sigma_s": b @ b.T,
  }


def test_load_reference_batch_layouts(tmp_path):
  rng = np.random.default_rng(1)
  imgs, stats = _images(6), _stats(rng, 5, 4)
  path = tmp_path / "VIRTUAL_ref.npz"
  np.savez(path, arr_0=imgs, **stats)  # the layout of VIRTUAL_imagenet256_labeled.npz
  ref = adm_npz.load_reference_batch(path, dims=None)
  assert ref.has_statistics and ref.num_images == 6 and ref.image_shape == (8, 6, 3)
  assert ref.images is None
  for k, v in stats.items():
    np.testing.assert_array_equal(getattr(ref, k), v)
    assert getattr(ref, k).dtype == np.float64
  np.testing.assert_array_equal(np.concatenate(list(ref.iter_images(4))), imgs)
  np.testing.assert_array_equal(adm_npz.load_reference_batch(path, True, dims=None).images, imgs)
  with pytest.raises(adm_npz.AdmNpzError, match="'mu' has shape"):
    adm_npz.load_reference_batch(path)  # ADM's dimensions are 2048 / 2023

  only_images = tmp_path / "imgs.npz"
  np.savez(only_images, arr_0=imgs)
  ref = adm_npz.load_reference_batch(only_images)
  assert not ref.has_statistics and ref.num_images == 6

  only_stats = tmp_path / "stats.npz"
  np.savez(only_stats, **stats)
  ref = adm_npz.load_reference_batch(only_stats, dims=(5, 4))
  assert ref.has_statistics and ref.num_images == 0
  with pytest.raises(adm_npz.AdmNpzError, match="no images"):
    ref.iter_images(2)


def test_load_reference_batch_errors(tmp_path):
  with pytest.raises(adm_npz.AdmNpzError, match="not found"):
    adm_npz.load_reference_batch(tmp_path / "missing.npz")
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip")
  with pytest.raises(adm_npz.AdmNpzError, match="not a .npz"):
    adm_npz.load_reference_batch(bad)
  stats = _stats(np.random.default_rng(2), 3, 2)
  partial = tmp_path / "partial.npz"
  np.savez(partial, arr_0=_images(2), mu=stats["mu"], sigma=stats["sigma"])
  with pytest.raises(adm_npz.AdmNpzError, match=r"lacks \['mu_s', 'sigma_s'\]"):
    adm_npz.load_reference_batch(partial)
  empty = tmp_path / "empty.npz"
  np.savez(empty, labels=np.arange(3))
  with pytest.raises(adm_npz.AdmNpzError, match="neither images"):
    adm_npz.load_reference_batch(empty)
  floats = tmp_path / "floats.npz"
  np.savez(floats, arr_0=np.zeros((2, 4, 4, 3), np.float32))
  with pytest.raises(adm_npz.AdmNpzError, match="uint8 NHWC"):
    adm_npz.load_reference_batch(floats)
