"""ADM metric formulas (FID, IS, precision/recall) against independent numpy implementations."""

import warnings

import numpy as np
import pytest

from softvq_jax.evaluation import metrics

F16 = np.float16
BLOCKS = dict(row_batch_size=40, col_batch_size=32)  # ADM uses 10000: small blocks test blocking


def _features(rng, n, d, shift=0.0, scale=1.0):
  """Synthetic features with a non-trivial (correlated, anisotropic) covariance."""
  a = rng.normal(size=(d, d)) * np.linspace(0.2, 2.0, d)[:, None]
  return (rng.normal(size=(n, d)) @ a) * scale + shift + rng.normal(size=d)


def _fid_numpy(mu1, s1, mu2, s2):
  """Tr sqrt(S1 S2) via the symmetric form sqrt(S1) S2 sqrt(S1) (eigh), float64."""
  w, v = np.linalg.eigh(s1)
  r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  lam = np.linalg.eigvalsh(r1 @ s2 @ r1)
  tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
  diff = mu1 - mu2
  return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean


# ---------------------------------------------------------------------------------------------
# FID


def test_fid_statistics_match_numpy():
  x = _features(np.random.default_rng(0), 50, 6).astype(np.float32)
  mu, sigma = metrics.fid_statistics(x)
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)


def test_frechet_distance_matches_independent_numpy():
  rng = np.random.default_rng(1)
  s1 = metrics.fid_statistics(_features(rng, 400, 24))
  s2 = metrics.fid_statistics(_features(rng, 300, 24, shift=0.5, scale=1.3))
  got = metrics.frechet_distance(*s1, *s2)
  np.testing.assert_allclose(got, _fid_numpy(*s1, *s2), rtol=1e-9)
  assert got > 1.0
  # symmetric, and ~0 against itself
  np.testing.assert_allclose(metrics.frechet_distance(*s2, *s1), got, rtol=1e-9)
  assert abs(metrics.frechet_distance(*s1, *s1)) < 1e-8 * np.trace(s1[1])


def test_frechet_distance_closed_form_1d():
  # N(0, 1) vs N(1, 4): 1 + 1 + 4 - 2 * sqrt(4) = 2
  assert metrics.frechet_distance(0.0, 1.0, 1.0, 4.0) == pytest.approx(2.0, rel=1e-12)


def test_frechet_distance_rank_deficient_covariances():
  # fewer samples than dimensions (as sFID with small sets): singular covariances
  rng = np.random.default_rng(2)
  s1 = metrics.fid_statistics(_features(rng, 10, 16))
  s2 = metrics.fid_statistics(_features(rng, 12, 16, shift=0.2))
  got = metrics.frechet_distance(*s1, *s2)
  np.testing.assert_allclose(got, _fid_numpy(*s1, *s2), rtol=1e-5)


def test_frechet_distance_eps_offset_when_sqrtm_not_finite(monkeypatch):
  rng = np.random.default_rng(3)
  s1 = metrics.fid_statistics(_features(rng, 60, 5))
  s2 = metrics.fid_statistics(_features(rng, 60, 5, shift=1.0))
  real_sqrtm, calls = metrics._sqrtm, []

  def flaky(a):
    calls.append(a)
    return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

  monkeypatch.setattr(metrics, "_sqrtm", flaky)
  with pytest.warns(UserWarning, match="adding 1e-06 to diagonal"):
    got = metrics.frechet_distance(*s1, *s2)
  eye = np.eye(5) * 1e-6
  np.testing.assert_allclose(calls[1], (s1[1] + eye) @ (s2[1] + eye), rtol=1e-12)
  # ADM adds the offset only inside the sqrtm; the traces use the original covariances
  diff = s1[0] - s2[0]
  tr = np.trace(real_sqrtm((s1[1] + eye) @ (s2[1] + eye))).real
  expected = diff @ diff + np.trace(s1[1]) + np.trace(s2[1]) - 2 * tr
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_frechet_distance_complex_sqrtm(monkeypatch):
  rng = np.random.default_rng(4)
  s1 = metrics.fid_statistics(_features(rng, 40, 4))
  real = metrics._sqrtm(s1[1] @ s1[1])
  monkeypatch.setattr(metrics, "_sqrtm", lambda a: real + 1e-5j)  # small: real part is used
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert abs(metrics.frechet_distance(*s1, *s1)) < 1e-8 * np.trace(s1[1])
  monkeypatch.setattr(metrics, "_sqrtm", lambda a: real + 0.1j)  # large: ADM raises
  with pytest.raises(ValueError, match="Imaginary component"):
    metrics.frechet_distance(*s1, *s1)


def test_frechet_distance_shape_errors():
  with pytest.raises(ValueError, match="mean vectors"):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------------------------------------
# Inception Score


def _is_numpy(logits, split_size, dtype=np.float64):
  """ADM's loop: softmax, then per consecutive split exp(mean_x sum_y p (log p - log mean p))."""
  z = logits.astype(dtype)
  p = np.exp(z - z.max(1, keepdims=True))
  p = p / p.sum(1, keepdims=True)
  scores = []
  for i in range(0, len(p), split_size):
    part = p[i : i + split_size]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return float(np.mean(scores))


def test_inception_score_matches_adm_loop():
  logits = np.random.default_rng(5).normal(size=(23, 7)) * 3
  for split_size in (5, 23, 1000):
    got = metrics.inception_score(logits, split_size=split_size)
    np.testing.assert_allclose(got, _is_numpy(logits, split_size), rtol=1e-12)
    # ADM's float32 path (TF softmax in f32) agrees to float32 precision
    np.testing.assert_allclose(got, _is_numpy(logits, split_size, np.float32), rtol=1e-5)
  # splits=10 uses chunks of ceil(N / 10): 50 samples -> 10 splits of 5, as ADM's 5000 at 50k
  logits = np.random.default_rng(6).normal(size=(50, 7)) * 3
  np.testing.assert_allclose(metrics.inception_score(logits), _is_numpy(logits, 5), rtol=1e-12)
  assert metrics.inception_score(logits, splits=1) == pytest.approx(_is_numpy(logits, 50))


def test_inception_score_limits():
  assert metrics.inception_score(np.zeros((40, 10)), splits=4) == pytest.approx(1.0, abs=1e-12)
  confident = 60.0 * np.eye(10)[np.arange(100) % 10]  # one-hot, every class equally often
  assert metrics.inception_score(confident, splits=1) == pytest.approx(10.0, rel=1e-6)
  # underflowing probabilities (0 * log 0) give the limit, not NaN
  assert metrics.inception_score(1e4 * np.eye(8)[np.arange(64) % 8], splits=2) == pytest.approx(8)


# ---------------------------------------------------------------------------------------------
# Precision / recall


def _dist_block_numpy(u, v):
  """ADM's DistanceBlock: fp16 ops (f32/f64 accumulation) if all finite, else float32."""
  u16, v16 = u.astype(F16), v.astype(F16)
  with np.errstate(over="ignore", invalid="ignore"):
    nu = np.square(u16).astype(np.float64).sum(1).astype(F16)[:, None]
    nv = np.square(v16).astype(np.float64).sum(1).astype(F16)[None, :]
    mm = (u16.astype(np.float64) @ v16.astype(np.float64).T).astype(F16)
    d = np.maximum(nu - F16(2) * mm + nv, F16(0))
  if np.isfinite(d).all():
    return d.astype(np.float32)
  nu = np.square(u).sum(1, dtype=np.float64)[:, None]
  nv = np.square(v).sum(1, dtype=np.float64)[None, :]
  return np.maximum(nu - 2 * (u.astype(np.float64) @ v.T) + nv, 0).astype(np.float32)


def _pr_numpy(real, fake, k, rb, cb):
  """Independent ADM ManifoldEstimator: full blocked distance matrices, partition, comparisons."""

  def dists(a, b):
    out = np.zeros((len(a), len(b)), np.float32)
    for i in range(0, len(a), rb):
      for j in range(0, len(b), cb):
        out[i : i + rb, j : j + cb] = _dist_block_numpy(a[i : i + rb], b[j : j + cb])
    return out

  r_real = np.partition(dists(real, real), k, axis=1)[:, k]
  r_fake = np.partition(dists(fake, fake), k, axis=1)[:, k]
  d = dists(real, fake)
  precision = (d <= r_real[:, None]).any(0).mean()
  recall = (d <= r_fake[None, :]).any(1).mean()
  return precision, recall, r_real


def test_pairwise_distances_fp16_and_fallback():
  rng = np.random.default_rng(7)
  u = np.abs(rng.normal(size=(30, 16))).astype(np.float32) * 2
  v = np.abs(rng.normal(size=(20, 16))).astype(np.float32) * 2
  d = metrics.pairwise_distances(u, v)
  assert d.dtype == np.float32 and d.shape == (30, 20)
  np.testing.assert_array_equal(d.astype(F16).astype(np.float32), d)  # fp16 values
  ref = _dist_block_numpy(u, v)
  ulp = np.spacing(ref.astype(F16)).astype(np.float32)
  assert (np.abs(d - ref) <= ulp).all() and (d != ref).mean() < 0.01
  exact = ((u[:, None] - v[None]) ** 2).sum(-1)
  np.testing.assert_allclose(d, exact, rtol=4e-3, atol=0.1)
  # one large value overflows fp16 (|u|^2 > 65504): the whole block is recomputed in float32
  u[3, 0] = 300.0
  d = metrics.pairwise_distances(u, v)
  np.testing.assert_allclose(d, ((u[:, None] - v[None]) ** 2).sum(-1), rtol=1e-5)
  with np.errstate(over="ignore"):
    assert (d.astype(F16).astype(np.float32) != d).any()


def test_manifold_radii_kth_neighbour():
  # points on a line: the k-th neighbour (self is index 0) of point 0 is point k
  x = np.zeros((8, 3), np.float32)
  x[:, 0] = np.arange(8)
  radii = metrics.manifold_radii(x, k=3, row_batch_size=3, col_batch_size=5)
  np.testing.assert_array_equal(metrics.manifold_radii(x, k=3), radii)
  np.testing.assert_array_equal(radii[[0, 7, 4]], [9.0, 9.0, 4.0])
  clamped = metrics.manifold_radii(x, k=3, clamp_to_percentile=50)
  assert (clamped[radii > np.percentile(radii, 50)] == 0).all()
  with pytest.raises(ValueError, match="more than k"):
    metrics.manifold_radii(x[:3], k=3)


def test_precision_recall_matches_independent_numpy():
  rng = np.random.default_rng(8)
  real = np.abs(_features(rng, 90, 12)).astype(np.float32)
  fake = np.abs(_features(rng, 70, 12, shift=0.4, scale=1.3)).astype(np.float32)
  got = metrics.precision_recall(real, fake, k=3, **BLOCKS)
  p, r, radii = _pr_numpy(real, fake, 3, BLOCKS["row_batch_size"], BLOCKS["col_batch_size"])
  # identical up to fp16 rounding ties (f32 vs f64 accumulation of the fp16 matmul)
  assert got == (pytest.approx(p, abs=1.5 / len(fake)), pytest.approx(r, abs=1.5 / len(real)))
  assert 0.0 < got[0] < 1.0 and 0.0 < got[1] < 1.0
  ours = metrics.manifold_radii(real, 3, **BLOCKS)
  np.testing.assert_allclose(ours, radii, rtol=2e-3)
  assert (ours == radii).mean() > 0.9


def test_precision_recall_limits():
  rng = np.random.default_rng(9)
  real = np.abs(rng.normal(size=(40, 12))).astype(np.float32)
  assert metrics.precision_recall(real, real) == (1.0, 1.0)  # ADM's default blocks
  assert metrics.precision_recall(real, real + 10.0, **BLOCKS) == (0.0, 0.0)
  # fake collapsed onto a single real point: precise, but no recall beyond its neighbourhood
  p, r = metrics.precision_recall(real, np.repeat(real[:1], 40, axis=0) + 1e-3, **BLOCKS)
  assert p == 1.0 and r < 0.5
