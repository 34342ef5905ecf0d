"""Tokenizer inference as one executable: encode + decode in a single jit, fixed batch shape.

`reconstruct_fn` jits x -> clip(decode(encode(x)), -1, 1) with the input buffer donated, so the
latents never leave the device between the two halves and the output may reuse x's memory.
`reconstruct_batches` feeds it fixed-size batches, zero-padding the last one (sliced off after)
instead of compiling a second shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np


def reconstruct_fn(model):
  """(params, x (B, S, S, 3) in [-1, 1]) -> reconstructions, jitted, x donated."""

  def fn(params, x):
    z_q, _ = model.apply({"params": params}, x, method=model.encode)
    return jnp.clip(model.apply({"params": params}, z_q, method=model.decode), -1.0, 1.0)

  return jax.jit(fn, donate_argnums=(1,))


def padded(batches: Iterable[np.ndarray], batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """(batch of exactly `batch_size` rows, number of real rows): the last one zero-padded."""
  for x in batches:
    n = x.shape[0]
    if n > batch_size:
      raise ValueError(f"a batch of {n} images is larger than batch_size={batch_size}")
    if n < batch_size:
      x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
    yield x, n


def reconstruct_batches(fn, params, batches: Iterable[np.ndarray], batch_size: int):
  """Yields the reconstructions (host arrays) of each batch; one compiled shape for all."""
  pending = None
  for x, n in padded(batches, batch_size):
    out = fn(params, jax.device_put(x.astype(np.float32)))  # dispatched; fetch the previous one
    if pending is not None:
      yield np.asarray(pending[0])[: pending[1]]
    pending = (out, n)
  if pending is not None:
    yield np.asarray(pending[0])[: pending[1]]
