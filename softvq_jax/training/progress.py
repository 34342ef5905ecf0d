"""Progress: one steady line per log window and the steps/s, images/s scalars.

Rates are measured between log windows, which are sync points (the window's metrics are fetched
from the device), with evaluation, image and checkpoint time excluded, so they do not alternate
between "compute queued" and "compute done" the way timers between asynchronous steps do.
"""

from __future__ import annotations

import contextlib
import time

from absl import logging


def _duration(seconds: float) -> str:
  s = int(round(seconds))
  if s >= 3600:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
  """Tracks the training window: `excluded()` wraps non-training work, `window()` reports."""

  def __init__(self, total_steps: int, start_step: int, global_batch: int):
    self.total, self.batch = total_steps, global_batch
    self._step, self._t, self._excluded = start_step, time.perf_counter(), 0.0
    self._first = True
    self._started = time.perf_counter()

  @contextlib.contextmanager
  def excluded(self):
    """Time spent inside (eval, images, checkpoints) does not count as training time."""
    t = time.perf_counter()
    try:
      yield
    finally:
      self._excluded += time.perf_counter() - t

  def window(self, step: int, means: dict[str, float]) -> dict[str, float]:
    """Logs the progress line for the window ending at `step` (call after a sync point)."""
    now = time.perf_counter()
    seconds = max(now - self._t - self._excluded, 1e-9)
    steps = step - self._step
    rate = steps / seconds
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    loss = means.get("loss")
    parts = [
      f"step {step}/{self.total} ({100.0 * step / max(self.total, 1):.0f}%)",
      f"loss {loss:.4g}" if loss is not None else None,
      f"{rate:.3g} steps/s, {rate * self.batch:.3g} img/s",
      f"ETA {_duration(eta)}" if step < self.total else f"done in {_duration(now - self._started)}",
      "(incl. compilation)" if self._first else None,
    ]
    logging.info(" | ".join(p for p in parts if p))
    self._step, self._t, self._excluded, self._first = step, now, 0.0, False
    return {"steps_per_sec": rate, "images_per_sec": rate * self.batch}
