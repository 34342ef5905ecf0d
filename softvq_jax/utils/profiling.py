"""A `jax.profiler` trace of a few training steps, for TensorBoard's profile tab.

`config.profile.start_step` / `num_steps` (0: off) select the steps: the trace starts before
step `start_step` (1-based; 0 or less: the first step run) and stops after `num_steps` steps.
Both ends wait for the device (`block_until_ready` on the state) so the trace holds exactly
those steps, not work queued before or after. Written under `<workdir>/profile` on process 0.
"""

from __future__ import annotations

import jax
from absl import logging


class StepProfiler:
  """Call `before(step, state)` / `after(step, state)` around each step; `close()` at the end."""

  def __init__(self, logdir, start_step: int, num_steps: int, enabled: bool = True):
    self.logdir, self.start, self.num = str(logdir), int(start_step or 0), int(num_steps or 0)
    self.enabled = enabled and self.num > 0
    self._first, self._active = None, False

  def before(self, step: int, state) -> None:
    if not self.enabled or self._active or self._first is not None:
      return
    if step >= self.start:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.logdir)
      self._first, self._active = step, True
      logging.info("profiler: tracing steps %d-%d to %s", step, step + self.num - 1, self.logdir)

  def after(self, step: int, state) -> None:
    if self._active and step >= self._first + self.num - 1:
      jax.block_until_ready(state)
      self._stop()

  def close(self) -> None:
    """Stops a trace the run ended (or failed) inside of."""
    if self._active:
      self._stop()

  def _stop(self) -> None:
    jax.profiler.stop_trace()
    self._active = False
    logging.info("profiler: trace written to %s (TensorBoard's profile tab)", self.logdir)
