"""Evaluation batches during training: global, sharded, the same count on every process.

Each process reads its own share of the eval split (EvalData); a host that runs out early (fewer
examples, skipped images) feeds fully masked batches so that every process runs the same number
of jitted steps, whose sums are reduced in-jit over the whole mesh.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

from softvq_jax import sharding


def pad_batch(batch: dict, multiple: int) -> dict:
  """Pads a host batch to a multiple of `multiple` rows; padding rows have mask False."""
  n = len(batch["mask"])
  pad = -n % multiple
  if not pad:
    return dict(batch)
  out = {
    k: np.concatenate([v, np.repeat(np.asarray(v)[-1:], pad, axis=0)]) for k, v in batch.items()
  }
  out["mask"][n:] = False
  return out


def num_batches(num_examples: int, batch_size: int, max_examples: int = 0) -> int:
  """Batches per process for `num_examples` split over the processes (at most `max_examples`)."""
  per_process = -(-num_examples // jax.process_count())
  if max_examples:
    per_process = min(per_process, -(-max_examples // jax.process_count()))
  return -(-per_process // batch_size)


def global_eval_batches(
  eval_data, mesh: jax.sharding.Mesh, max_examples: int = 0, limit: int = 0
) -> Iterator[dict[str, jax.Array]]:
  """Global eval batches over `mesh` (rows beyond the data masked out); `limit` caps the count."""
  n = num_batches(eval_data.num_examples, eval_data.batch_size, max_examples)
  n = min(n, limit) if limit else n
  template = None
  it = eval_data.iterator()
  try:
    for _ in range(n):
      batch = next(it, None)
      if batch is None:  # this host is out of data: a fully masked batch keeps hosts in step
        if template is None and hasattr(eval_data, "empty_batch"):
          template = eval_data.empty_batch()
        if template is None:
          raise RuntimeError("no evaluation example could be read on this process")
        batch = {k: np.zeros_like(v) for k, v in template.items()}
      template = template or batch
      padded = pad_batch(batch, max(jax.local_device_count(), 1))
      yield sharding.global_batch(padded, mesh)
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      close()
