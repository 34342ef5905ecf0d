"""Streaming, sharded, resumable feature extraction for the ADM metrics (50k samples, any devices).

`FeatureAccumulator` keeps float64 running sums (shifted, so the covariance does not cancel) for
the mean/covariance of `pool` and `spatial` features and, only where a metric needs every row, the
rows themselves (`logits` for IS, `pool` for precision/recall) in memory or in a memmap. Its
`state_dict()`/`save()` make an interrupted extraction resumable. `make_feature_fn` runs a feature
network with the batch split over a 1-D mesh of this process's devices; `extract_features` drives
batches through it; `adm_metrics` turns sample/reference accumulators into ADM's five numbers.
Multi-host: every process extracts its own contiguous share, then `merge_across_processes`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh

from softvq_jax import sharding
from softvq_jax.evaluation import metrics
from softvq_jax.utils.files import save_npz_atomic
from softvq_jax.utils.paths import is_uri

MESH_AXIS = sharding.LOCAL_AXIS


class FeatureAccumulator:
  """Running mean/covariance (float64, on host) of some features and storage of others.

  stats: names whose (mu, sigma) are accumulated, e.g. ("pool", "spatial").
  keep: names whose rows are stored as float32, e.g. ("logits",) for IS, plus "pool" for
    precision/recall. With `memmap_dir` (and `capacity`, the maximum number of rows) they go to
    `<memmap_dir>/<name>.f32` files instead of memory (a local folder: memmaps need a local
    file system).
  """

  def __init__(
    self,
    stats: Sequence[str] = ("pool", "spatial"),
    keep: Sequence[str] = ("logits",),
    memmap_dir: str | os.PathLike | None = None,
    capacity: int | None = None,
  ):
    self.stats = tuple(stats)
    self.keep = tuple(keep)
    if memmap_dir is not None and is_uri(memmap_dir):
      raise ValueError(f"memmap_dir must be a local folder, not {memmap_dir}")
    self.memmap_dir = epath.Path(memmap_dir) if memmap_dir is not None else None
    if self.memmap_dir is not None and not capacity:
      raise ValueError("memmap storage needs `capacity` (the number of rows to reserve)")
    self.capacity = capacity
    self.count = 0
    self._shift: dict[str, np.ndarray] = {}
    self._sum: dict[str, np.ndarray] = {}
    self._sum_sq: dict[str, np.ndarray] = {}
    self._rows: dict[str, list[np.ndarray]] = {k: [] for k in self.keep}
    self._mm: dict[str, np.memmap] = {}

  # -- updating --------------------------------------------------------------------------------

  def _memmap(self, name: str, dim: int, mode: str) -> np.memmap:
    if name not in self._mm:
      path = self.memmap_dir / f"{name}.f32"
      self.memmap_dir.mkdir(parents=True, exist_ok=True)
      # a local file (URIs are refused in __init__): numpy maps it itself
      self._mm[name] = np.memmap(os.fspath(path), np.float32, mode, shape=(self.capacity, dim))
    return self._mm[name]

  def update(self, features: Mapping[str, np.ndarray]) -> None:
    """Adds a batch: {name: (n, ...)} arrays with the same n for every tracked name."""
    names = set(self.stats) | set(self.keep)
    missing = names - set(features)
    if missing:
      raise KeyError(f"features lack {sorted(missing)} (got {sorted(features)})")
    batch = {k: np.asarray(features[k]).reshape(len(features[k]), -1) for k in names}
    sizes = {len(v) for v in batch.values()}
    if len(sizes) != 1:
      raise ValueError(
        f"features have different batch sizes: { {k: len(v) for k, v in batch.items()} }"
      )
    n = sizes.pop()
    if n == 0:
      return
    if self.capacity is not None and self.count + n > self.capacity:
      raise ValueError(f"accumulator capacity {self.capacity} exceeded by {self.count + n} rows")
    for k in self.stats:
      x = batch[k].astype(np.float64)
      if k not in self._shift:  # first batch's mean: keeps the sums small (no cancellation)
        self._shift[k] = x.mean(axis=0)
        self._sum[k] = np.zeros(x.shape[1])
        self._sum_sq[k] = np.zeros((x.shape[1],) * 2)
      y = x - self._shift[k]
      self._sum[k] += y.sum(axis=0)
      self._sum_sq[k] += y.T @ y
    for k in self.keep:
      rows = batch[k].astype(np.float32)
      if self.memmap_dir is not None:
        self._memmap(k, rows.shape[1], "w+" if self.count == 0 else "r+")[
          self.count : self.count + n
        ] = rows
      else:
        self._rows[k].append(rows)
    self.count += n

  # -- results ---------------------------------------------------------------------------------

  def mean(self, name: str) -> np.ndarray:
    self._check_stat(name)
    return self._shift[name] + self._sum[name] / self.count

  def covariance(self, name: str) -> np.ndarray:
    """Unbiased (N-1) covariance, as np.cov(rowvar=False)."""
    self._check_stat(name)
    if self.count < 2:
      raise ValueError("covariance needs at least 2 samples")
    s = self._sum[name]
    return (self._sum_sq[name] - np.outer(s, s) / self.count) / (self.count - 1)

  def statistics(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) in float64 for the Fréchet distance."""
    return self.mean(name), self.covariance(name)

  def rows(self, name: str) -> np.ndarray:
    """All stored rows of `name`, (count, D) float32 (a memmap view with memmap storage)."""
    if name not in self.keep:
      raise KeyError(f"{name!r} rows are not kept (keep={self.keep})")
    if self.memmap_dir is not None:
      if name not in self._mm:
        return np.zeros((0, 0), np.float32)
      return self._mm[name][: self.count]
    if not self._rows[name]:
      return np.zeros((0, 0), np.float32)
    if len(self._rows[name]) > 1:
      self._rows[name] = [np.concatenate(self._rows[name])]
    return self._rows[name][0]

  def _check_stat(self, name: str) -> None:
    if name not in self.stats:
      raise KeyError(f"no statistics for {name!r} (stats={self.stats})")
    if self.count == 0:
      raise ValueError("no features accumulated yet")

  # -- state -----------------------------------------------------------------------------------

  def state_dict(self) -> dict[str, np.ndarray]:
    """Flat {key: array} state; memmap rows are flushed and stay in their files."""
    sd: dict[str, np.ndarray] = {"count": np.asarray(self.count, np.int64)}
    for k in self._shift:
      sd[f"shift/{k}"] = self._shift[k]
      sd[f"sum/{k}"] = self._sum[k]
      sd[f"sum_sq/{k}"] = self._sum_sq[k]
    for k in self.keep:
      if self.memmap_dir is not None:
        if k in self._mm:
          self._mm[k].flush()
      else:
        sd[f"rows/{k}"] = self.rows(k)
    return sd

  def load_state_dict(self, sd: Mapping[str, np.ndarray]) -> None:
    """Restores a `state_dict()` (the same stats/keep/memmap configuration)."""
    self.count = int(sd["count"])
    self._shift = {
      k[6:]: np.asarray(v, np.float64) for k, v in sd.items() if k.startswith("shift/")
    }
    self._sum = {k: np.asarray(sd[f"sum/{k}"], np.float64) for k in self._shift}
    self._sum_sq = {k: np.asarray(sd[f"sum_sq/{k}"], np.float64) for k in self._shift}
    if self.count and set(self._shift) != set(self.stats):
      raise ValueError(f"state has statistics {sorted(self._shift)}, expected {self.stats}")
    self._mm = {}
    for k in self.keep:
      if self.memmap_dir is not None:
        path = self.memmap_dir / f"{k}.f32"
        if self.count:
          if not path.is_file():
            raise FileNotFoundError(f"memmap rows {path} of the saved state are missing")
          dim = path.stat().length // (4 * self.capacity)
          self._memmap(k, dim, "r+")
      else:
        rows = np.asarray(sd.get(f"rows/{k}", np.zeros((0, 0))), np.float32)
        if len(rows) != self.count:
          raise ValueError(f"state has {len(rows)} {k!r} rows for count {self.count}")
        self._rows[k] = [rows] if len(rows) else []

  def save(self, path: str | os.PathLike) -> None:
    """Writes the state atomically to an .npz (see save_npz_atomic)."""
    save_npz_atomic(path, self.state_dict())

  def load(self, path: str | os.PathLike) -> None:
    with epath.Path(path).open("rb") as f, np.load(f, allow_pickle=False) as data:
      self.load_state_dict({k: data[k] for k in data.files})

  def merge(self, other: FeatureAccumulator) -> None:
    """Adds another accumulator's samples after this one's (rows concatenated in order)."""
    if other.count == 0:
      return
    if self.count == 0:
      self._shift = {k: v.copy() for k, v in other._shift.items()}
      self._sum = {k: np.zeros_like(v) for k, v in other._sum.items()}
      self._sum_sq = {k: np.zeros_like(v) for k, v in other._sum_sq.items()}
    for k in self.stats:
      d = other._shift[k] - self._shift[k]  # re-centre other's sums on self's shift
      s, n = other._sum[k], other.count
      self._sum[k] += s + n * d
      self._sum_sq[k] += other._sum_sq[k] + np.outer(s, d) + np.outer(d, s) + n * np.outer(d, d)
    for k in self.keep:
      rows = np.asarray(other.rows(k))
      if self.memmap_dir is not None:
        self._memmap(k, rows.shape[1], "w+" if self.count == 0 else "r+")[
          self.count : self.count + len(rows)
        ] = rows
      else:
        self._rows[k].append(rows)
    self.count += other.count


def merge_across_processes(acc: FeatureAccumulator) -> FeatureAccumulator:
  """Multi-host: every process's accumulator merged in process order (identity on one host).

  Needs in-memory rows and at least one sample on every process.
  """
  if jax.process_count() == 1:
    return acc
  from jax.experimental import multihost_utils

  if acc.memmap_dir is not None:
    raise ValueError("merge_across_processes needs in-memory rows (no memmap_dir)")
  counts = np.asarray(multihost_utils.process_allgather(np.asarray(acc.count))).reshape(-1)
  if (counts == 0).any():
    raise ValueError(f"every process needs samples to merge, got counts {counts.tolist()}")
  sd = acc.state_dict()
  for k in acc.keep:  # equal shapes for the gather
    rows = sd[f"rows/{k}"]
    sd[f"rows/{k}"] = np.pad(rows, ((0, int(counts.max()) - len(rows)), (0, 0)))
  gathered = multihost_utils.process_allgather(sd)  # leading axis: process
  out = FeatureAccumulator(acc.stats, acc.keep)
  for p, n in enumerate(counts):
    part = FeatureAccumulator(acc.stats, acc.keep)
    one = {k: np.asarray(v)[p] for k, v in gathered.items()}
    for k in acc.keep:
      one[f"rows/{k}"] = one[f"rows/{k}"][:n]
    part.load_state_dict(one)
    out.merge(part)
  return out


# ----------------------------------------------------------------------------------------------
# Sharded feature function and the extraction loop


def feature_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh (axis "batch") over this process's devices (`sharding.local_mesh`)."""
  return sharding.local_mesh(devices)


def make_feature_fn(
  apply_fn: Callable[[Any, Any], Mapping[str, Any]], params: Any, mesh: Mesh | None = None
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  """Host batch (n, ...) -> {name: (n, ...) np.ndarray}, computed by `apply_fn(params, batch)`.

  `sharding.local_batch_fn`: parameters replicated, the batch padded to a multiple of the mesh
  size and split over it, the padding dropped. For the Inception:
  `make_feature_fn(inception.apply_features, inception.load_inception_params(path))`.
  """
  run = sharding.local_batch_fn(apply_fn, params, mesh)
  return lambda batch: dict(run(batch))


BatchSource = Callable[[int], Iterable[np.ndarray]] | Iterable[np.ndarray]


def extract_features(
  feature_fn: Callable[[np.ndarray], Mapping[str, np.ndarray]],
  batches: BatchSource,
  accumulator: FeatureAccumulator,
  *,
  num_samples: int | None = None,
  state_path: str | os.PathLike | None = None,
  save_every: int = 0,
  progress: Callable[[int], None] | None = None,
) -> FeatureAccumulator:
  """Runs batches through `feature_fn` into `accumulator`, resuming where it stopped.

  batches: a callable `start -> iterable of batches from sample index start` (efficient resume),
    or an iterable from the beginning (the first `accumulator.count` rows are skipped).
  num_samples: stop after this many samples (the last batch is cut).
  state_path: if it exists it is loaded first; the state is saved there every `save_every`
    batches and at the end.
  """
  if state_path is not None and epath.Path(state_path).is_file():
    accumulator.load(state_path)
  start = accumulator.count
  if callable(batches):
    source, skip = batches(start), 0
  else:
    source, skip = batches, start
  done, it = 0, iter(source)
  while num_samples is None or accumulator.count < num_samples:  # never pulls an unneeded batch
    batch = next(it, None)
    if batch is None:
      break
    batch = np.asarray(batch)
    if skip:
      cut = min(skip, len(batch))
      batch, skip = batch[cut:], skip - cut
      if not len(batch):
        continue
    if num_samples is not None:
      batch = batch[: num_samples - accumulator.count]
    accumulator.update(feature_fn(batch))
    done += 1
    if progress is not None:
      progress(accumulator.count)
    if state_path is not None and save_every and done % save_every == 0:
      accumulator.save(state_path)
  if state_path is not None:
    accumulator.save(state_path)
  return accumulator


def adm_metrics(
  samples: FeatureAccumulator,
  reference: FeatureAccumulator | None = None,
  reference_stats: Mapping[str, np.ndarray] | None = None,
  *,
  is_split_size: int | None = metrics.ADM_IS_SPLIT_SIZE,
) -> dict[str, float]:
  """ADM's numbers: inception_score, fid, sfid, precision, recall (those computable).

  Reference statistics come from `reference_stats` (the npz's mu, sigma, mu_s, sigma_s) when
  given, as ADM prefers them, else from the `reference` accumulator; precision/recall need pool
  rows kept in both accumulators (ADM recomputes reference activations from its images).
  """
  out: dict[str, float] = {}
  if "logits" in samples.keep and samples.count:
    out["inception_score"] = metrics.inception_score(
      samples.rows("logits"), split_size=is_split_size
    )
  for name, key, suffix in (("pool", "fid", ""), ("spatial", "sfid", "_s")):
    if name not in samples.stats:
      continue
    if reference_stats is not None and f"mu{suffix}" in reference_stats:
      ref = (reference_stats[f"mu{suffix}"], reference_stats[f"sigma{suffix}"])
    elif reference is not None and name in reference.stats:
      ref = reference.statistics(name)
    else:
      continue
    out[key] = metrics.frechet_distance(*samples.statistics(name), *ref)
  if reference is not None and "pool" in samples.keep and "pool" in reference.keep:
    out["precision"], out["recall"] = metrics.precision_recall(
      reference.rows("pool"), samples.rows("pool")
    )
  return out
