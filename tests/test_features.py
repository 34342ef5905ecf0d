"""Streaming feature accumulation, resumable extraction, and 8-device sharded == single device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.evaluation import features as F
from softvq_jax.evaluation import metrics


def _batches(n, bs, seed=0, dims=(6, 5, 4)):
  """Feature batches with a large common offset (tests the shifted sums) and correlations."""
  rng = np.random.default_rng(seed)
  mix = {k: rng.normal(size=(d, d)) for k, d in zip(("pool", "spatial", "logits"), dims)}
  out = []
  for i in range(0, n, bs):
    m = min(bs, n - i)
    out.append(
      {k: (rng.normal(size=(m, a.shape[0])) @ a + 1e3).astype(np.float32) for k, a in mix.items()}
    )
  return out


def _concat(batches, key):
  return np.concatenate([b[key] for b in batches]).astype(np.float64)


def test_accumulator_matches_numpy_mean_cov_and_rows(tmp_path):
  batches = _batches(53, 8)
  acc = F.FeatureAccumulator(keep=("logits", "pool"))
  mm = F.FeatureAccumulator(keep=("logits", "pool"), memmap_dir=tmp_path / "mm", capacity=60)
  for b in batches:
    acc.update(b)
    mm.update(b)
  assert acc.count == mm.count == 53
  for k in ("pool", "spatial"):
    x = _concat(batches, k)
    mu, sigma = acc.statistics(k)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(mm.statistics(k)[1], sigma)
  for k in ("logits", "pool"):
    np.testing.assert_array_equal(acc.rows(k), _concat(batches, k).astype(np.float32))
    np.testing.assert_array_equal(mm.rows(k), acc.rows(k))
  with pytest.raises(KeyError, match="not kept"):
    acc.rows("spatial")
  with pytest.raises(KeyError, match="lack"):
    acc.update({"pool": np.zeros((2, 6))})


@pytest.mark.parametrize("memmap", [False, True])
def test_state_dict_resume_is_exact(tmp_path, memmap):
  batches = _batches(40, 8)
  kw = dict(memmap_dir=tmp_path / "mm", capacity=40) if memmap else {}
  full = F.FeatureAccumulator(keep=("logits",), **kw)
  for b in batches:
    full.update(b)
  kw = dict(memmap_dir=tmp_path / "mm2", capacity=40) if memmap else {}
  part = F.FeatureAccumulator(keep=("logits",), **kw)
  for b in batches[:2]:
    part.update(b)
  part.save(tmp_path / "state.npz")
  resumed = F.FeatureAccumulator(keep=("logits",), **kw)
  resumed.load(tmp_path / "state.npz")
  assert resumed.count == 16
  for b in batches[2:]:
    resumed.update(b)
  for k in ("pool", "spatial"):
    np.testing.assert_array_equal(resumed.statistics(k)[0], full.statistics(k)[0])
    np.testing.assert_array_equal(resumed.statistics(k)[1], full.statistics(k)[1])
  np.testing.assert_array_equal(resumed.rows("logits"), full.rows("logits"))


def test_merge_equals_single_pass():
  batches = _batches(37, 6)
  one, a, b = (F.FeatureAccumulator(keep=("logits",)) for _ in range(3))
  for i, batch in enumerate(batches):
    one.update(batch)
    (a if i < 3 else b).update(batch)
  a.merge(b)
  assert a.count == 37
  for k in ("pool", "spatial"):
    np.testing.assert_allclose(a.statistics(k)[0], one.statistics(k)[0], rtol=1e-12)
    np.testing.assert_allclose(a.statistics(k)[1], one.statistics(k)[1], rtol=1e-9, atol=1e-9)
  np.testing.assert_array_equal(a.rows("logits"), one.rows("logits"))
  assert F.merge_across_processes(a) is a  # one process: identity


def _apply(params, images):
  """A stand-in feature network (the loop is model-agnostic): uint8 NHWC -> pool/spatial/logits."""
  x = images.astype(jnp.float32) / 255.0
  h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["w"])
  return {
    "pool": h,
    "spatial": x[:, :2, :2, :].reshape(x.shape[0], -1),
    "logits": h @ params["w2"],
  }


def _params():
  rng = np.random.default_rng(3)
  return {
    "w": rng.normal(size=(4 * 4 * 3, 6)).astype(np.float32),
    "w2": rng.normal(size=(6, 5)).astype(np.float32),
  }


def _image_batches(n, bs, seed=4):
  imgs = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
  return imgs, [imgs[i : i + bs] for i in range(0, n, bs)]


def test_sharded_extraction_equals_single_device():
  assert len(jax.local_devices()) == 8
  mesh8 = F.feature_mesh()
  mesh1 = F.feature_mesh(jax.local_devices()[:1])
  assert mesh8.devices.size == 8 and mesh1.devices.size == 1
  imgs, batches = _image_batches(45, 13)  # 13 rows: padded to 16 over 8 devices
  f8, f1 = F.make_feature_fn(_apply, _params(), mesh8), F.make_feature_fn(_apply, _params(), mesh1)
  out8 = f8(batches[0])
  assert {k: v.shape for k, v in out8.items()} == {
    "pool": (13, 6),
    "spatial": (13, 12),
    "logits": (13, 5),
  }
  acc8 = F.extract_features(f8, batches, F.FeatureAccumulator(keep=("logits", "pool")))
  acc1 = F.extract_features(f1, batches, F.FeatureAccumulator(keep=("logits", "pool")))
  direct = jax.jit(_apply)(_params(), imgs)
  for k in ("logits", "pool"):  # equal up to float32 summation order (values ~1-10)
    np.testing.assert_allclose(acc8.rows(k), acc1.rows(k), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(acc8.rows(k), direct[k], rtol=1e-5, atol=2e-5)
  for k in ("pool", "spatial"):
    np.testing.assert_allclose(acc8.statistics(k)[1], acc1.statistics(k)[1], rtol=1e-5, atol=1e-6)


def test_extraction_resumes_after_interruption(tmp_path):
  imgs, batches = _image_batches(40, 8)
  fn = F.make_feature_fn(_apply, _params())
  full = F.extract_features(fn, batches, F.FeatureAccumulator())

  def crashing():
    for i, b in enumerate(batches):
      if i == 3:
        raise RuntimeError("preempted")
      yield b

  state = tmp_path / "features_state.npz"
  with pytest.raises(RuntimeError, match="preempted"):
    F.extract_features(fn, crashing(), F.FeatureAccumulator(), state_path=state, save_every=1)
  starts = []

  def from_index(start):  # a resumable source: starts where the saved state stopped
    starts.append(start)
    return (imgs[i : i + 8] for i in range(start, 40, 8))

  resumed = F.extract_features(fn, from_index, F.FeatureAccumulator(), state_path=state)
  assert starts == [24] and resumed.count == 40
  np.testing.assert_array_equal(resumed.rows("logits"), full.rows("logits"))
  np.testing.assert_array_equal(resumed.statistics("pool")[1], full.statistics("pool")[1])
  # an iterable from the beginning is skipped up to the saved count; num_samples cuts the end
  pulled = []

  def counting():
    for b in batches:
      pulled.append(len(b))
      yield b

  again = F.extract_features(fn, counting(), F.FeatureAccumulator(), num_samples=30)
  np.testing.assert_array_equal(again.rows("logits"), full.rows("logits")[:30])
  assert len(pulled) == 4  # 8 + 8 + 8 + 6: no batch generated beyond num_samples
  again.save(state)
  skipped = F.extract_features(fn, iter(batches), F.FeatureAccumulator(), state_path=state)
  np.testing.assert_array_equal(skipped.rows("logits"), full.rows("logits"))


def test_adm_metrics_from_accumulators():
  rng = np.random.default_rng(5)
  dims = (6, 5, 10)
  samples, reference = (
    F.FeatureAccumulator(keep=("logits", "pool")),
    F.FeatureAccumulator(keep=("pool",)),
  )
  for b in _batches(60, 16, seed=6, dims=dims):
    samples.update(b)
  for b in _batches(50, 16, seed=7, dims=dims):
    reference.update(b)
  out = F.adm_metrics(samples, reference)
  assert set(out) == {"inception_score", "fid", "sfid", "precision", "recall"}
  fid = metrics.frechet_distance(*samples.statistics("pool"), *reference.statistics("pool"))
  assert out["fid"] == pytest.approx(fid, rel=1e-12)
  is_ = metrics.inception_score(samples.rows("logits"), split_size=5000)
  assert out["inception_score"] == pytest.approx(is_, rel=1e-12)
  pr = metrics.precision_recall(reference.rows("pool"), samples.rows("pool"))
  assert (out["precision"], out["recall"]) == pr
  # precomputed reference statistics (the npz's mu/sigma/mu_s/sigma_s) take precedence
  stats = {"mu": rng.normal(size=6), "sigma": np.eye(6), "mu_s": np.zeros(5), "sigma_s": np.eye(5)}
  out2 = F.adm_metrics(samples, None, stats)
  assert set(out2) == {"inception_score", "fid", "sfid"}
  ref_fid = metrics.frechet_distance(*samples.statistics("pool"), stats["mu"], stats["sigma"])
  assert out2["fid"] == pytest.approx(ref_fid, rel=1e-12)
