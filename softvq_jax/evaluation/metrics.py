"""Generation metrics exactly as OpenAI's ADM evaluator (guided-diffusion evaluations/evaluator.py).

FID/sFID (Fréchet distance of Inception statistics), Inception Score (split-wise mean of exp(KL))
and improved precision/recall (k-NN manifold estimator with fp16-first pairwise distances).
Importable without the Inception network: everything here works on feature arrays.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

# ADM's ManifoldEstimator defaults.
ROW_BATCH_SIZE = 10000
COL_BATCH_SIZE = 10000
# ADM's Inception Score uses consecutive splits of 5000 samples (10 splits for 50k samples).
ADM_IS_SPLIT_SIZE = 5000


# ----------------------------------------------------------------------------------------------
# FID / sFID


def fid_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of (N, D) features as ADM: mean and the unbiased (N-1) covariance, float64."""
  x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
  return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
  """Principal matrix square root: scipy's Schur method (ADM's), else an eigen fallback."""
  try:
    from scipy import linalg
  except ImportError:  # pragma: no cover - scipy ships with scikit-image
    w, v = np.linalg.eig(a)
    return (v * np.sqrt(w.astype(np.complex128))) @ np.linalg.inv(v)
  return linalg.sqrtm(a)


def frechet_distance(
  mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
  """ADM's Fréchet distance ||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), in float64.

  As ADM: if sqrtm(S1 S2) is not finite, `eps` is added to both diagonals and it is recomputed; a
  complex result whose diagonal's imaginary part exceeds 1e-3 raises ValueError, otherwise the real
  part is used. Symmetric in its two (mu, sigma) pairs up to the sqrtm's rounding.
  """
  mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
  if mu1.shape != mu2.shape:
    raise ValueError(f"mean vectors have different lengths: {mu1.shape} vs {mu2.shape}")
  if sigma1.shape != sigma2.shape:
    raise ValueError(f"covariances have different shapes: {sigma1.shape} vs {sigma2.shape}")
  if sigma1.shape != (mu1.shape[0],) * 2:
    raise ValueError(f"covariance shape {sigma1.shape} does not match mean length {mu1.shape}")

  diff = mu1 - mu2
  covmean = _sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    warnings.warn(
      f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates",
      stacklevel=2,
    )
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------------------------
# Inception Score


def _softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def inception_score(
  logits: np.ndarray, splits: int = 10, *, split_size: int | None = None
) -> float:
  """ADM's Inception Score: mean over consecutive splits of exp(E_x KL(p(y|x) || p(y))).

  `logits` (N, C) are the Inception classifier logits (ADM: pool_3 @ softmax weights, no bias).
  ADM splits into consecutive chunks of 5000 samples (the last one may be shorter) and returns the
  mean only. Here the chunk size is `split_size`, or ceil(N / splits) when it is None, which is 5000
  for ADM's 50k samples with the default `splits=10`; pass `split_size=ADM_IS_SPLIT_SIZE` to split
  exactly as ADM for any N. Computed in float64; where ADM's float32 softmax would underflow to an
  exact 0 (giving NaN from 0 * log 0), the limit 0 is used.
  """
  logits = np.asarray(logits, dtype=np.float64)
  if logits.ndim != 2 or len(logits) == 0:
    raise ValueError(f"logits must be (N, C) with N > 0, got {logits.shape}")
  n = len(logits)
  if split_size is None:
    if splits < 1:
      raise ValueError(f"splits must be >= 1, got {splits}")
    split_size = math.ceil(n / splits)
  preds = _softmax(logits)
  scores = []
  for i in range(0, n, split_size):
    part = preds[i : i + split_size]
    marginal = part.mean(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
      kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0)
    scores.append(np.exp(kl.sum(axis=1).mean()))
  return float(np.mean(scores))


# ----------------------------------------------------------------------------------------------
# Precision / recall (improved precision and recall, Kynkäänniemi et al. 2019, as in ADM)


def _squared_distances(u: jax.Array, v: jax.Array) -> jax.Array:
  """max(|u|^2 - 2 u.v + |v|^2, 0) with every op in the inputs' dtype (f32 accumulation)."""
  dt = u.dtype
  norm_u = jnp.sum(jnp.square(u).astype(jnp.float32), axis=1).astype(dt)[:, None]
  norm_v = jnp.sum(jnp.square(v).astype(jnp.float32), axis=1).astype(dt)[None, :]
  uv = jnp.dot(u, v.T, preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST)
  uv = uv.astype(dt)
  d = norm_u - uv * jnp.asarray(2, dt) + norm_v
  return jnp.maximum(d, jnp.asarray(0, dt))


@jax.jit
def _distance_block(u: jax.Array, v: jax.Array) -> jax.Array:
  """ADM's DistanceBlock: fp16 squared distances if all finite, else recomputed in fp32."""
  d16 = _squared_distances(u.astype(jnp.float16), v.astype(jnp.float16))
  return jax.lax.cond(
    jnp.all(jnp.isfinite(d16)),
    lambda: d16.astype(jnp.float32),
    lambda: _squared_distances(u.astype(jnp.float32), v.astype(jnp.float32)),
  )


def pairwise_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """(R, D), (C, D) -> (R, C) float32 squared Euclidean distances as one ADM distance block."""
  return np.asarray(_distance_block(jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32)))


def _blocks(x: np.ndarray, size: int):
  """Yields (begin, count, block) with every block zero-padded to min(size, len(x)) rows.

  One block shape per set means one compilation. Zero rows never change a block's fp16/fp32
  choice (their distances are |v|^2, already part of every real entry) and are masked out.
  """
  rows = min(size, len(x))
  for begin in range(0, len(x), size):
    block = x[begin : begin + size]
    count = len(block)
    if count < rows:
      block = np.concatenate([block, np.zeros((rows - count, x.shape[1]), x.dtype)])
    yield begin, count, jnp.asarray(block)


@functools.partial(jax.jit, static_argnums=3)
def _block_smallest(u: jax.Array, v: jax.Array, v_count: jax.Array, n: int) -> jax.Array:
  """The n smallest distances of each row of one block to its first v_count columns: (R, n)."""
  d = _distance_block(u, v)
  d = jnp.where(jnp.arange(d.shape[1])[None, :] < v_count, d, jnp.inf)
  return -jax.lax.top_k(-d, n)[0]


def manifold_radii(
  features: np.ndarray,
  k: int = 3,
  *,
  row_batch_size: int = ROW_BATCH_SIZE,
  col_batch_size: int = COL_BATCH_SIZE,
  clamp_to_percentile: float | None = None,
) -> np.ndarray:
  """(N,) float32 k-NN radii as ADM: the k-th smallest squared distance of each point to the set.

  The point itself (distance ~0) counts as index 0, so this is the k-th nearest other point. Blocks
  are (row_batch_size x col_batch_size), each computed in fp16 unless it overflows (ADM's rule).
  """
  features = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
  n = len(features)
  if n <= k:
    raise ValueError(f"need more than k={k} feature vectors for k-NN radii, got {n}")
  radii = np.zeros([n], dtype=np.float32)
  nsmall = min(k + 1, col_batch_size, n)
  for begin1, count1, rows in _blocks(features, row_batch_size):
    candidates = [
      np.asarray(_block_smallest(rows, cols, count2, nsmall))[:count1]
      for _, count2, cols in _blocks(features, col_batch_size)
    ]
    merged = np.concatenate(candidates, axis=1)
    radii[begin1 : begin1 + count1] = np.partition(merged, k, axis=1)[:, k]
  if clamp_to_percentile is not None:
    radii[radii > np.percentile(radii, clamp_to_percentile)] = 0
  return radii


@jax.jit
def _block_in_manifold(u, radii_u, u_count, v, radii_v, v_count):
  """Rows of u inside some v-ball, and rows of v inside some u-ball, for one (padded) block."""
  d = _distance_block(u, v)  # (R, C)
  u_ok = (jnp.arange(d.shape[0]) < u_count)[:, None]
  v_ok = (jnp.arange(d.shape[1]) < v_count)[None, :]
  u_in = jnp.any((d <= radii_v[None, :]) & v_ok, axis=1)
  v_in = jnp.any((d <= radii_u[:, None]) & u_ok, axis=0)
  return u_in, v_in


def precision_recall(
  real_features: np.ndarray,
  fake_features: np.ndarray,
  k: int = 3,
  *,
  row_batch_size: int = ROW_BATCH_SIZE,
  col_batch_size: int = COL_BATCH_SIZE,
  clamp_to_percentile: float | None = None,
) -> tuple[float, float]:
  """ADM's improved (precision, recall) of fake vs real (N, 2048) pool features.

  Precision: fraction of fake samples inside the k-NN ball (squared radius) of some real sample;
  recall: fraction of real samples inside the ball of some fake sample. Distances are computed in
  ADM's (row_batch_size x col_batch_size) blocks (rows: real, columns: fake), each in fp16 with a
  float32 fallback when any distance of the block overflows fp16.
  """
  real = np.asarray(real_features, dtype=np.float32).reshape(len(real_features), -1)
  fake = np.asarray(fake_features, dtype=np.float32).reshape(len(fake_features), -1)
  kw = dict(
    row_batch_size=row_batch_size,
    col_batch_size=col_batch_size,
    clamp_to_percentile=clamp_to_percentile,
  )
  radii_real = manifold_radii(real, k, **kw)
  radii_fake = manifold_radii(fake, k, **kw)
  real_in = np.zeros([len(real)], dtype=bool)
  fake_in = np.zeros([len(fake)], dtype=bool)

  def padded(radii, begin, size, rows):
    r = radii[begin : begin + size]
    return jnp.asarray(np.pad(r, (0, rows - len(r))))

  for b1, n1, u in _blocks(real, row_batch_size):
    ru = padded(radii_real, b1, row_batch_size, u.shape[0])
    for b2, n2, v in _blocks(fake, col_batch_size):
      rv = padded(radii_fake, b2, col_batch_size, v.shape[0])
      u_in, v_in = _block_in_manifold(u, ru, n1, v, rv, n2)
      real_in[b1 : b1 + n1] |= np.asarray(u_in)[:n1]
      fake_in[b2 : b2 + n2] |= np.asarray(v_in)[:n2]
  return float(fake_in.mean()), float(real_in.mean())
