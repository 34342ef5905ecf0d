"""Tokenizer evaluation: rFID (+ sFID, IS), PSNR, SSIM, LPIPS and codebook usage over a split.

The protocol of the reference's `reconstruct_vq.py` (SPEC §3), without its bugs: ADM center crop,
originals and reconstructions both rounded to uint8 as `clamp(127.5 x + 128, 0, 255)` truncated,
Inception features of the two uint8 sets streamed into float64 running statistics (never 50k images
in memory), rFID = Fréchet distance of the pool_3 statistics, PSNR and SSIM on the uint8 images with
data range 255. Every process evaluates its own share of the split; sums and features are merged
across processes at the end. The loop state is saved every `save_every` batches so an interrupted
run resumes where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from softvq_jax.evaluation import common, features, image_metrics, metrics
from softvq_jax.utils.files import save_npz_atomic

# A tokenizer round trip in jax: (params, x in [-1, 1]) -> (reconstruction, quantizer info).
RoundTrip = Callable[[Any, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]
SUM_KEYS = ("psnr", "ssim", "lpips", "mse")


def tokenizer_round_trip(tokenizer) -> RoundTrip:
  """encode -> decode of a `PretrainedTokenizer` (its module; params are passed separately)."""
  model = tokenizer.model

  def round_trip(params, x):
    z_q, info = model.apply({"params": params}, x, method=model.encode)
    return model.apply({"params": params}, z_q, method=model.decode), info

  return round_trip


def make_reconstruct_fn(
  round_trip: RoundTrip,
  params: Any,
  *,
  lpips_fn: Callable[[Any, jax.Array, jax.Array], jax.Array] | None = None,
  lpips_params: Any = None,
  mesh=None,
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  """Host float batch (B, S, S, 3) in [-1, 1] -> per-image arrays, split over local devices.

  Outputs: original, reconstruction (uint8), psnr, ssim, mse (uint8 images, data range 255),
  lpips (on the uint8 images mapped back to [-1, 1]) when `lpips_fn` is given, and the
  quantizer's argmax indices (B, L) when it has them.
  """

  def apply(p, x):
    rec, info = round_trip(p["model"], x)
    orig_u8, rec_u8 = image_metrics.to_uint8(x, jnp), image_metrics.to_uint8(rec, jnp)
    out = {
      "original": orig_u8,
      "reconstruction": rec_u8,
      "psnr": image_metrics.psnr(orig_u8, rec_u8, 255.0),
      "ssim": image_metrics.ssim(orig_u8, rec_u8, 255.0),
      "mse": image_metrics.mse(orig_u8, rec_u8),
    }
    if lpips_fn is not None:
      to_float = lambda u: u.astype(jnp.float32) / 127.5 - 1.0
      out["lpips"] = lpips_fn(p["lpips"], to_float(orig_u8), to_float(rec_u8)).reshape(-1)
    if "indices" in info:
      out["indices"] = info["indices"]
    return out

  return features.make_feature_fn(apply, {"model": params, "lpips": lpips_params}, mesh)


class ReconstructionState:
  """Per-process running state: feature accumulators, metric sums, code counts, grid images."""

  def __init__(
    self, precision_recall: bool = False, num_codebooks: int = 0, codebook_size: int = 0
  ):
    keep = ("logits", "pool") if precision_recall else ("logits",)
    self.real = features.FeatureAccumulator(("pool", "spatial"), keep)
    self.fake = features.FeatureAccumulator(("pool", "spatial"), keep)
    self.sums = {k: 0.0 for k in SUM_KEYS}
    self.has_lpips = False
    self.counts = (
      np.zeros((num_codebooks, codebook_size), np.int64)
      if num_codebooks and codebook_size
      else None
    )
    self.batches = 0
    self.grid_original = np.zeros((0, 0, 0, 3), np.uint8)
    self.grid_reconstruction = np.zeros((0, 0, 0, 3), np.uint8)

  @property
  def count(self) -> int:
    return self.fake.count

  def state_dict(self) -> dict[str, np.ndarray]:
    sd = {f"real/{k}": v for k, v in self.real.state_dict().items()}
    sd.update({f"fake/{k}": v for k, v in self.fake.state_dict().items()})
    sd.update({f"sums/{k}": np.float64(v) for k, v in self.sums.items()})
    sd["has_lpips"] = np.bool_(self.has_lpips)
    sd["batches"] = np.int64(self.batches)
    sd["grid/original"] = self.grid_original
    sd["grid/reconstruction"] = self.grid_reconstruction
    if self.counts is not None:
      sd["counts"] = self.counts
    return sd

  def load_state_dict(self, sd: Mapping[str, np.ndarray]) -> None:
    self.real.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("real/")})
    self.fake.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("fake/")})
    self.sums = {k: float(sd[f"sums/{k}"]) for k in SUM_KEYS}
    self.has_lpips = bool(sd["has_lpips"])
    self.batches = int(sd["batches"])
    self.grid_original = np.asarray(sd["grid/original"])
    self.grid_reconstruction = np.asarray(sd["grid/reconstruction"])
    if self.counts is not None:
      if "counts" not in sd or sd["counts"].shape != self.counts.shape:
        raise ValueError("the saved evaluation state has different codebook counts; delete it")
      self.counts = np.asarray(sd["counts"], np.int64)

  def save(self, path: str | os.PathLike) -> None:
    save_npz_atomic(path, self.state_dict())

  def load(self, path: str | os.PathLike) -> None:
    with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as data:
      self.load_state_dict({k: data[k] for k in data.files})


def run_reconstruction(
  reconstruct_fn: Callable[[np.ndarray], Mapping[str, np.ndarray]],
  feature_fn: Callable[[np.ndarray], Mapping[str, np.ndarray]],
  batches: Iterable[Mapping[str, np.ndarray]],
  state: ReconstructionState,
  *,
  max_images: int | None = None,
  grid_images: int = 16,
  state_path: str | os.PathLike | None = None,
  save_every: int = 0,
  progress: common.Progress | None = None,
  on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> ReconstructionState:
  """This process's loop: reconstruct, measure, and accumulate Inception features.

  batches: EvalData-style dicts with "image" (B, S, S, 3) in [-1, 1] and "mask" (B,), from the
    beginning of this process's share (on resume the first `state.batches` batches are skipped).
  max_images: this process's image limit. on_batch(originals, reconstructions) sees the kept
    uint8 rows of every batch (e.g. to write them to an ADM npz).
  """
  if state_path is not None and epath.Path(state_path).is_file():
    state.load(state_path)
    if progress is not None:
      print(f"resuming evaluation after {state.count} images ({state_path})", flush=True)
  skip = state.batches
  for i, batch in enumerate(batches):
    if max_images is not None and state.count >= max_images:
      break
    if i < skip:
      continue
    keep = np.asarray(batch.get("mask", np.ones(len(batch["image"]), bool)), bool)
    if max_images is not None:
      keep &= np.cumsum(keep) <= max_images - state.count
    out = reconstruct_fn(np.asarray(batch["image"], np.float32))
    out = {k: np.asarray(v)[keep] for k, v in out.items()}
    n = int(keep.sum())
    if n:
      both = np.concatenate([out["original"], out["reconstruction"]])
      feats = feature_fn(both)  # one call, one compiled shape
      state.real.update({k: v[:n] for k, v in feats.items()})
      state.fake.update({k: v[n:] for k, v in feats.items()})
      for k in SUM_KEYS:
        if k in out:
          state.sums[k] += float(np.sum(out[k], dtype=np.float64))
      state.has_lpips = "lpips" in out
      if state.counts is not None and "indices" in out:
        nc, k = state.counts.shape
        state.counts += common.count_codes(out["indices"], nc, k)
      room = grid_images - len(state.grid_original)
      if room > 0:
        state.grid_original = _append(state.grid_original, out["original"][:room])
        state.grid_reconstruction = _append(state.grid_reconstruction, out["reconstruction"][:room])
      if on_batch is not None:
        on_batch(out["original"], out["reconstruction"])
    state.batches = i + 1
    if progress is not None:
      progress.update(state.count * jax.process_count())  # an estimate on several processes
    if state_path is not None and save_every and state.batches % save_every == 0:
      state.save(state_path)
  if state_path is not None:
    state.save(state_path)
  return state


def _append(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return b.copy() if a.size == 0 else np.concatenate([a, b])


def _gather_sums(state: ReconstructionState) -> tuple[dict[str, float], int, np.ndarray | None]:
  sums = np.array([state.sums[k] for k in SUM_KEYS] + [state.count], np.float64)
  counts = state.counts
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    sums = np.asarray(multihost_utils.process_allgather(sums)).reshape(-1, len(sums)).sum(0)
    if counts is not None:
      counts = np.asarray(multihost_utils.process_allgather(counts)).sum(0)
  return dict(zip(SUM_KEYS, sums[:-1])), int(sums[-1]), counts


def summarize(
  state: ReconstructionState,
  *,
  reference_stats: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
  """The metrics over all processes: rfid, sfid, inception_score (of the reconstructions and of
  the originals), psnr, ssim, mse, [lpips], [precision, recall], [codebook_*], and, against an
  ADM reference batch's statistics, fid/sfid of the reconstructions and of the originals."""
  sums, n, counts = _gather_sums(state)
  if n < 2:
    raise ValueError(f"rFID needs at least 2 images, got {n}")
  real = features.merge_across_processes(state.real)
  fake = features.merge_across_processes(state.fake)
  adm = features.adm_metrics(fake, real)
  out: dict[str, Any] = {
    "num_images": n,
    "rfid": adm["fid"],
    "rsfid": adm["sfid"],
    "inception_score": adm["inception_score"],
    "inception_score_originals": metrics.inception_score(
      real.rows("logits"), split_size=metrics.ADM_IS_SPLIT_SIZE
    ),
  }
  if "precision" in adm:
    out["precision"], out["recall"] = adm["precision"], adm["recall"]
  out["psnr"] = sums["psnr"] / n
  out["ssim"] = sums["ssim"] / n
  out["mse_uint8"] = sums["mse"] / n
  if state.has_lpips:
    out["lpips"] = sums["lpips"] / n
  if counts is not None and counts.sum():
    out.update(common.codebook_statistics(counts))
  if reference_stats is not None:
    ref = features.adm_metrics(fake, None, reference_stats)
    out["fid_vs_reference"], out["sfid_vs_reference"] = ref["fid"], ref["sfid"]
    ref = features.adm_metrics(real, None, reference_stats)
    out["fid_originals_vs_reference"] = ref["fid"]
  return out
