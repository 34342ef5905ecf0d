"""The interface a trainer implements (`Task`): the pure pieces (state init, train step) and the
host-side evaluation and images; `training/loop.py` runs any Task.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import ml_collections
import numpy as np

from softvq_jax import data
from softvq_jax.training.train_state import TrainState


def local_eval_batch(config: ml_collections.ConfigDict) -> int:
  """This process's share of eval.batch_size (a global batch, as batch_size), so that what is
  evaluated does not depend on the number of processes."""
  n, p = config.eval.batch_size, jax.process_count()
  if n % p:
    raise ValueError(f"eval.batch_size={n} is not divisible by the {p} processes; use a multiple")
  return n // p


class Task(abc.ABC):
  """What a trainer plugs into the loop. Pure functions must not close over device arrays."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    total_steps: int,
    warmup_steps: int,
  ):
    self.config = config
    self.mesh = mesh
    self.total_steps = total_steps
    self.warmup_steps = warmup_steps

  @classmethod
  def build_data(cls, config: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """(train data, eval data) of this process for `config.data` (see data.build_train_data).

    A classmethod: the loop builds the data before the task (the step count depends on the
    training set's size). Tasks that build their own data override it.
    """
    kw = dict(
      image_size=config.model.image_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    train = data.build_train_data(
      config.data, global_batch=config.batch_size, seed=config.seed, **kw
    )
    return train, data.build_eval_data(config.data, batch_size=local_eval_batch(config), **kw)

  @abc.abstractmethod
  def init_state(self, rng: jax.Array) -> TrainState:
    """Fresh state from a key (pure: traced by eval_shape and jit)."""

  def post_init(self, state: TrainState) -> TrainState:
    """Host-side changes to a fresh (not resumed) state, e.g. loading pretrained weights."""
    return state

  def frozen_params(self) -> Any:
    """Frozen networks' weights (teachers, LPIPS, the tokenizer for generators), or None.

    Passed to every step as a jit argument (replicated), never closed over or checkpointed.
    """
    return None

  @abc.abstractmethod
  def train_step(self, state: TrainState, batch: dict, frozen: Any) -> tuple[TrainState, dict]:
    """One optimisation step (pure). Metrics: f32 scalars; keys ending in `_counts` are summed."""

  def sharding_rules(self) -> list:
    """(regex, PartitionSpec) overrides for the state's sharding."""
    return []

  def evaluate(self, state: TrainState, eval_data, step: int) -> dict[str, float]:
    """Host-side evaluation; returns scalars to log."""
    return {}

  def images(self, state: TrainState, eval_data, step: int) -> dict[str, np.ndarray]:
    """Named uint8 (H, W, 3) grids to write as PNG and TensorBoard images."""
    return {}

  def window_metrics(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
    """Scalars derived from metrics summed over a logging window (e.g. codebook usage)."""
    return {}
