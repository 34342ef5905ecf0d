"""Bookkeeping of undecodable examples, shared by the training, evaluation and latent pipelines.

A long run meets the same bad file once per epoch: it is warned about once per run (with the
error), decoded once, and every later use of it is only counted. The counts are read by the
training loop (TensorBoard `data/skipped`, eval_summary.json) from `TrainData.num_skipped`.
"""

from __future__ import annotations

import threading

from absl import logging


class SkipCounts:
  """`num_skipped` / `num_bad` of a training pipeline that keeps its SkipLog in `_skips`."""

  _skips: SkipLog

  @property
  def num_skipped(self) -> int:
    """Samples served by a replacement because their example was undecodable (this process,
    since it started; counted when decoded, i.e. up to `prefetch` batches ahead of training)."""
    return self._skips.num_skipped

  @property
  def num_bad(self) -> int:
    """Distinct undecodable examples met so far (each warned about once)."""
    return self._skips.num_bad


class SkipLog:
  """Undecodable examples met by one pipeline: one warning per example per run, thread-safe.

  `num_skipped` counts skip events (each sample served by a replacement, or each dropped eval
  item); `num_bad` the distinct bad examples; `bad` maps each to its error message.
  """

  def __init__(self, what: str = "example"):
    self._what, self._lock = what, threading.Lock()
    self._bad: dict = {}
    self._skipped = 0

  def is_bad(self, key) -> bool:
    """Whether `key` already failed (then it is not decoded again)."""
    return key in self._bad

  def record(self, key, error: Exception | str, skipped: int = 1) -> None:
    """Example `key` failed to decode (warned about the first time only); adds `skipped`."""
    with self._lock:
      first = key not in self._bad
      if first:
        self._bad[key] = str(error)
      self._skipped += skipped
    if first:
      logging.warning(
        "skipping undecodable %s %s (warned once per run): %s", self._what, key, error
      )

  def skip(self, n: int = 1) -> None:
    """Counts `n` more skips of examples already known to be bad."""
    with self._lock:
      self._skipped += n

  @property
  def num_skipped(self) -> int:
    """Skip events so far."""
    return self._skipped

  @property
  def num_bad(self) -> int:
    """Distinct undecodable examples so far."""
    return len(self._bad)

  @property
  def bad(self) -> dict:
    """{example: error message} of the undecodable examples (a copy)."""
    with self._lock:
      return dict(self._bad)
