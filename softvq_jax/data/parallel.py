"""Ordered batch assembly with per-example parallelism on one thread pool.

Every input pipeline here (training images, evaluation images, latent caches, the latent-cache
writer, the online encoder's images) builds a batch as a set of independent tasks: one per
example (decode, ADM crop, flip, float conversion, written into its row of a preallocated batch)
or one per batch (latent records, cheap per example). `ParallelBatches` runs the tasks of the
next `depth` batches on `workers` threads and hands the batches out strictly in step order, so:

- all workers help with every batch (the batch no longer waits on one thread, and `num_workers`
  above `prefetch` is used);
- a batch depends only on its step (each task is a pure function of its example), never on the
  number of workers or on thread timing: batches are bitwise identical for any worker count and
  resuming at step k reproduces the uninterrupted stream.

Threads, not processes: PIL's decode and resize and numpy's copies and casts release the GIL, so
the Python left per example (~0.1 ms) bounds a host at several thousand images/s.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

# A task fills its part of a Pending batch's `value` in place (or returns a per-example result).
Task = Callable[[], Any]


def available_cores() -> int:
  """CPU cores this process may run on (its affinity mask, e.g. under taskset/SLURM/k8s)."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except (AttributeError, OSError):  # not Linux
    return max(1, os.cpu_count() or 1)


def resolve_workers(num_workers: int | None) -> int:
  """data.num_workers -> threads: a positive count as given; 0 / None / negative = every core."""
  if num_workers is None or int(num_workers) <= 0:
    return available_cores()
  return int(num_workers)


def batch_depth(prefetch: int, workers: int, tasks_per_batch: int) -> int:
  """Batches kept in flight: `prefetch`, raised so that every worker has a task queued.

  With a small local batch and many cores (e.g. 16 examples on 96 threads), or one task per
  batch (latents), `prefetch` batches would leave workers idle; the extra batches cost memory.
  """
  need = math.ceil(workers / max(1, tasks_per_batch)) + 1
  return max(1, int(prefetch), need)


@dataclasses.dataclass
class Pending:
  """A batch being built: `tasks` run on the pool; then `finish(value, results)` on the consumer.

  `finish` defaults to returning `value` (tasks wrote into it); `results` are the tasks' return
  values in task order.
  """

  value: Any
  tasks: Sequence[Task]
  finish: Callable[[Any, list], Any] | None = None


Plan = Callable[[int], Pending]


class ParallelBatches:
  """Yields the batches `plan(step)` for step = start, start + 1, ... (stop, if given, excluded).

  The tasks of the next `depth` batches (beyond the one being consumed) are queued on `workers`
  threads in step order; a task's exception is raised when its batch is taken. `close()` cancels
  what is queued and joins the threads.
  """

  def __init__(
    self,
    plan: Plan,
    start: int = 0,
    *,
    depth: int = 2,
    workers: int = 1,
    stop: int | None = None,
    name: str = "softvq_data",
  ):
    self._plan, self._next, self._stop = plan, int(start), stop
    self._depth = max(1, int(depth))
    self._pool = concurrent.futures.ThreadPoolExecutor(max(1, int(workers)), name)
    self._queue: collections.deque = collections.deque()
    self._closed = False

  def __iter__(self):
    return self

  def _fill(self, n: int) -> None:
    while len(self._queue) < n and (self._stop is None or self._next < self._stop):
      pending = self._plan(self._next)
      futures = [self._pool.submit(t) for t in pending.tasks]
      self._queue.append((pending, futures))
      self._next += 1

  def __next__(self):
    if self._closed:
      raise StopIteration
    self._fill(1)
    if not self._queue:
      self.close()
      raise StopIteration
    pending, futures = self._queue.popleft()
    self._fill(self._depth)  # keep `depth` batches in flight while this one is consumed
    try:
      results = [f.result() for f in futures]
    except BaseException:
      self.close()
      raise
    if pending.finish is None:
      return pending.value
    return pending.finish(pending.value, results)

  def close(self) -> None:
    """Cancels the queued batches and waits for the running tasks."""
    if self._closed:
      return
    self._closed = True
    for _, futures in self._queue:
      for f in futures:
        f.cancel()
    self._queue.clear()
    self._pool.shutdown(wait=True, cancel_futures=True)

  def __del__(self):
    if not getattr(self, "_closed", True):
      self._closed = True
      self._pool.shutdown(wait=False, cancel_futures=True)


def run_serially(pending: Pending):
  """A Pending batch built on the calling thread (`batch(step)`; same values as the iterator)."""
  results = [task() for task in pending.tasks]
  return pending.value if pending.finish is None else pending.finish(pending.value, results)
