"""Progress: one steady line per log window and the steps/s, images/s (and MFU) scalars.

Rates are measured between log windows, which are sync points (the window's metrics are fetched
from the device), with evaluation, image, checkpoint and compilation time excluded, so they do
not alternate between "compute queued" and "compute done" the way timers between asynchronous
steps do. Given the per-device FLOPs of a step (training/flops.py), each window also reports
model TFLOP/s per device and, with a known peak, MFU (`perf/tflops_per_device`, `perf/mfu`).
"""

from __future__ import annotations

import contextlib
import time

from absl import logging

from softvq_jax.training import flops as flops_lib


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
    self.step_flops, self.peak_tflops = None, None

  def set_perf(self, step_flops: float | None = None, peak_tflops: float | None = None):
    """Per-device FLOPs of one step and the device's peak TFLOP/s (None: unknown)."""
    self.step_flops, self.peak_tflops = step_flops, peak_tflops

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
    perf = flops_lib.utilisation(self.step_flops, rate, self.peak_tflops)
    parts = [
      f"step {step}/{self.total} ({100.0 * step / max(self.total, 1):.0f}%)",
      f"loss {loss:.4g}" if loss is not None else None,
      f"{rate:.3g} steps/s, {rate * self.batch:.3g} img/s",
      _perf_text(perf),
      f"ETA {_duration(eta)}" if step < self.total else f"done in {_duration(now - self._started)}",
      "(incl. warm-up)" if self._first else None,
    ]
    logging.info(" | ".join(p for p in parts if p))
    self._step, self._t, self._excluded, self._first = step, now, 0.0, False
    return {"steps_per_sec": rate, "images_per_sec": rate * self.batch, **perf}


def _perf_text(perf: dict[str, float]) -> str | None:
  """'12.3 TFLOP/s/device, MFU 4.5%' (MFU only with a known peak)."""
  if "perf/tflops_per_device" not in perf:
    return None
  text = f"{perf['perf/tflops_per_device']:.3g} TFLOP/s/device"
  if "perf/mfu" in perf:
    text += f", MFU {100.0 * perf['perf/mfu']:.3g}%"
  return text
