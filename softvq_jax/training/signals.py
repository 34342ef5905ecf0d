"""Stop requests: SIGTERM / SIGINT / SIGUSR1 -> finish the step, save, wait for the commit, exit.

SLURM (`scancel`, the time limit, `--signal=USR1@90`), Kubernetes and TPU maintenance events send
SIGTERM; Ctrl-C is SIGINT (a second Ctrl-C aborts at once, without saving). On several processes
the request is shared at every step, so all of them stop after the same step.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from absl import logging

SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
PREEMPTED = -1  # JAX's multi-host preemption sync point (TPU), reported by Orbax


class TrainingStopped(Exception):
  """Raised by the loop after the state of `step` was saved because of a stop request."""

  def __init__(self, signum: int, step: int, message: str):
    super().__init__(message)
    self.signum, self.step = signum, step

  @property
  def exit_code(self) -> int:
    """0 for SIGTERM/SIGUSR1/preemption (a clean, resumable stop); 130 for Ctrl-C."""
    return 130 if self.signum == signal.SIGINT else 0


class StopRequest:
  """Context manager installing the handlers; `requested()` is polled once per step."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}

  def __enter__(self) -> StopRequest:
    if threading.current_thread() is threading.main_thread():
      for name in SIGNALS:
        num = getattr(signal, name, None)
        if num is not None:
          self._previous[num] = signal.signal(num, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for num, handler in self._previous.items():
      signal.signal(num, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame) -> None:
    if self.signum is not None and signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt  # the second Ctrl-C: abort without saving
    self.signum = signum
    logging.warning(
      "received %s: finishing this step, saving a checkpoint and exiting%s",
      signal.Signals(signum).name,
      " (Ctrl-C again aborts without saving)" if signum == signal.SIGINT else "",
    )

  def requested(self) -> int | None:
    """The signal to stop for, agreed by every process (another process's if only it got one)."""
    local = self.signum or 0
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      every = multihost_utils.process_allgather(np.asarray(local, np.int32))
      return local or (int(np.max(every)) or None)
    return local or None
