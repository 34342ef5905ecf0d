"""Shared pieces of the evaluation commands: Inception weights, progress, codebook usage, JSON.

Used by `reconstruction.py` (rFID/PSNR/SSIM of a tokenizer) and `generation.py` (gFID of a
generator); the command line lives in `softvq_jax/cli/evaluate.py`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from softvq_jax.evaluation import adm_npz, features
from softvq_jax.models.frozen import inception
from softvq_jax.utils.files import atomic_open
from softvq_jax.weights import inception as inception_weights

# Below this many samples an FID is dominated by its bias (ADM and the paper use 50,000); below
# the feature dimension (2048 for the Inception pool) the covariance is singular.
FID_MIN_SAMPLES = 2048
INCEPTION_POOL_DIM = 2048
RANDOM_INIT_WARNING = (
  "INCEPTION WEIGHTS ARE RANDOM (--inception_random_init): the FID/sFID/IS/precision/recall "
  "numbers are NOT comparable to any published figure; use this only for tests and smoke runs."
)


def inception_params(
  path: str | None, random_init: bool = False, seed: int = 0
) -> tuple[Any, bool]:
  """(Inception params, comparable): the published weights, or random ones only on request.

  path: the pytorch-fid `pt_inception-2015-12-05` weights (.safetensors, .npz, or .pth with
  torch). Without a path and without `random_init` a ValueError names the `--inception` flag.
  """
  if path:
    return inception_weights.load_inception_params(path), True
  if not random_init:
    raise ValueError(
      "no Inception weights: pass --inception=/path/to/pt_inception-2015-12-05.safetensors (the "
      "pytorch-fid FID Inception, converted once as described in softvq_jax/evaluation/"
      "inception.py), or --inception_random_init for a smoke test with non-comparable metrics"
    )
  logging.warning(RANDOM_INIT_WARNING)
  print("WARNING: " + RANDOM_INIT_WARNING, flush=True)
  model = inception.InceptionV3FID()
  params = jax.jit(lambda k: model.init(k, jnp.zeros((1, 75, 75, 3), jnp.uint8))["params"])(
    jax.random.key(seed)
  )
  return jax.device_get(params), False


def inception_feature_fn(params: Any, mesh=None):
  """Host uint8 NHWC batch -> {pool, spatial, logits} arrays, the batch split over local devices."""
  return features.make_feature_fn(inception.apply_features, params, mesh)


def tiny_feature_fn(seed: int = 0):
  """A cheap stand-in for the Inception (smoke tests only; numbers are NOT comparable).

  uint8 (n, H, W, 3) -> {pool (n, 64), spatial (n, 32), logits (n, 16)}: an 8 x 8 average pool
  and fixed random projections. Small dimensions keep the Fréchet sqrtm instant on a CPU.
  """
  rng = np.random.default_rng(seed)
  w = {k: rng.normal(size=(192, d)) / 8 for k, d in (("pool", 64), ("spatial", 32), ("logits", 16))}

  def fn(images: np.ndarray) -> dict[str, np.ndarray]:
    x = np.asarray(images, np.float64) / 127.5 - 1.0
    n, h, wd, _ = x.shape
    x = x[:, : h // 8 * 8, : wd // 8 * 8].reshape(n, 8, h // 8, 8, wd // 8, 3).mean((2, 4))
    return {k: np.tanh(x.reshape(n, 192) @ m).astype(np.float32) for k, m in w.items()}

  return fn


def reference_statistics(path: str | None) -> dict[str, np.ndarray] | None:
  """mu/sigma/mu_s/sigma_s of an ADM reference batch (e.g. VIRTUAL_imagenet256_labeled.npz)."""
  if not path:
    return None
  ref = adm_npz.load_reference_batch(path)
  if not ref.has_statistics:
    raise adm_npz.AdmNpzError(
      f"{path}: the reference batch holds images but no precomputed statistics (mu, sigma, "
      "mu_s, sigma_s); use the ADM VIRTUAL_*.npz files, or pass it as --ref_batch so its "
      "images are run through the Inception"
    )
  return {k: getattr(ref, k) for k in adm_npz.STAT_KEYS}


class Progress:
  """Prints `done/total images, images/s, ETA` at most every `every_s` seconds (process 0)."""

  def __init__(self, total: int, what: str = "images", every_s: float = 10.0):
    self.total, self.what, self.every_s = total, what, every_s
    self.start = time.perf_counter()
    self._last = -math.inf
    self.done = 0
    self._first_done: tuple[float, int] | None = None

  def rate(self) -> float:
    """Images/s since the first update (excludes the first batch's compilation)."""
    if self._first_done is None:
      return 0.0
    t0, n0 = self._first_done
    dt = time.perf_counter() - t0
    if self.done > n0 and dt > 0:
      return (self.done - n0) / dt
    return self.done / max(self.elapsed(), 1e-9)  # one batch only: includes compilation

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def update(self, done: int, force: bool = False) -> None:
    self.done = done
    now = time.perf_counter()
    if self._first_done is None:
      self._first_done = (now, done)
    if not force and now - self._last < self.every_s:
      return
    self._last = now
    rate = self.rate()
    eta = (self.total - done) / rate if rate > 0 else float("nan")
    if jax.process_index() == 0:
      print(
        f"{done}/{self.total} {self.what}, {rate:.2f} {self.what}/s, "
        f"elapsed {now - self.start:.0f}s, ETA {eta:.0f}s",
        flush=True,
      )


def codebook_statistics(counts: np.ndarray) -> dict[str, float]:
  """Usage and perplexity of argmax code counts (nc, K), averaged over the codebooks.

  codebook_usage: fraction of the K codes chosen at least once; codebook_perplexity:
  exp(entropy) of the code frequencies (K if all codes are used equally, 1 if one code is).
  """
  counts = np.asarray(counts, np.float64)
  total = counts.sum(-1, keepdims=True)
  p = counts / np.maximum(total, 1)
  entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0), -1)
  return {
    "codebook_usage": float(np.mean(np.count_nonzero(counts, -1) / counts.shape[-1])),
    "codebook_perplexity": float(np.mean(np.exp(entropy))),
    "codebook_size": int(counts.shape[-1]),
    "num_codebooks": int(counts.shape[0]),
  }


def count_codes(indices: np.ndarray, num_codebooks: int, codebook_size: int) -> np.ndarray:
  """(B, L) argmax indices -> (nc, K) counts; token l uses codebook l // (L / nc)."""
  indices = np.asarray(indices)
  b, n = indices.shape
  book = np.broadcast_to(np.arange(n) // (n // num_codebooks), (b, n))
  counts = np.zeros((num_codebooks, codebook_size), np.int64)
  np.add.at(counts, (book.reshape(-1), indices.reshape(-1)), 1)
  return counts


def fid_sample_warning(num: int, dim: int | None = INCEPTION_POOL_DIM) -> str | None:
  """A warning when `num` samples are too few for a meaningful FID (None when enough)."""
  if dim and num <= dim:
    return (
      f"FID from {num} images: not more than the feature dimension ({dim}), so the covariance is "
      "singular and the FID/sFID are not meaningful (ADM and the paper use 50,000 images)"
    )
  if num < FID_MIN_SAMPLES:
    return (
      f"FID from {num} images: fewer than {FID_MIN_SAMPLES}; the FID/sFID are biased upward and "
      "noisy, not comparable to published numbers (ADM and the paper use 50,000 images)"
    )
  return None


def warn(message: str | None) -> None:
  """Prints `warning: ...` (process 0) and logs it; None does nothing."""
  if message and jax.process_index() == 0:
    print(f"warning: {message}", flush=True)


def note_skipped(skipped: Mapping[str, str]) -> None:
  """Says which metrics are not computed and why (one line), e.g. FID without --ref_batch."""
  if skipped and jax.process_index() == 0:
    print("skipped: " + "; ".join(f"{k} ({why})" for k, why in skipped.items()), flush=True)


def plain(x):
  """numpy scalars/arrays in (nested) results -> Python floats/ints/lists (prints as 1.5, not
  np.float64(1.5)); non-finite floats stay floats (write_json stringifies them)."""
  if isinstance(x, Mapping):
    return {k: plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return type(x)(plain(v) for v in x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  return x


def remove_state(*paths: str | os.PathLike | None) -> None:
  """Deletes resume state (files or folders, local or gs://) once a run has finished; the
  results stay."""
  for p in paths:
    if p is None:
      continue
    p = epath.Path(p)
    if p.is_dir():
      p.rmtree(missing_ok=True)
    elif p.exists():
      p.unlink(missing_ok=True)


def _json_safe(x):
  if isinstance(x, Mapping):
    return {str(k): _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, np.ndarray):
    return _json_safe(x.tolist())
  if isinstance(x, np.generic):
    return _json_safe(x.item())
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)  # strict JSON has no inf/nan
  if isinstance(x, os.PathLike):
    return os.fspath(x)
  return x


def write_json(path: str | os.PathLike, data: Mapping) -> epath.Path:
  """Writes `data` as indented strict JSON, atomically, local or gs:// (non-finite floats become
  strings)."""
  with atomic_open(path, "w") as f:
    json.dump(_json_safe(data), f, indent=2, allow_nan=False)
    f.write("\n")
  return epath.Path(path)


def device_description() -> str:
  d = jax.devices()
  return f"{len(d)} x {d[0].device_kind} ({d[0].platform}), {jax.process_count()} process(es)"
