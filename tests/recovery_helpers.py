"""Shared pieces of the recovery tests: a tiny tokenizer run whose data stream can be hooked."""

import pathlib
import sys

import jax
import numpy as np

from softvq_jax import checkpointing, sharding
from softvq_jax.training.tokenizer import TokenizerTask

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_tokenizer_trainer import tiny_config  # noqa: E402

__all__ = ["tiny_config", "hooked_task", "abstract_state", "state_of", "leaves_equal", "all_finite"]


class _HookedData:
  """Delegates to the real training data; `hook(step, batch)` may change a batch or signal."""

  def __init__(self, inner, hook):
    self._inner, self._hook = inner, hook

  def __getattr__(self, name):
    return getattr(self._inner, name)

  def iterator(self, start_step):
    inner = self._inner.iterator(start_step)

    def gen():
      try:
        for step, batch in enumerate(inner, start=start_step + 1):
          yield self._hook(step, batch)
      finally:
        inner.close()

    return gen()


def hooked_task(hook):
  """A TokenizerTask whose training batches pass through `hook(step, batch)` first."""

  class Hooked(TokenizerTask):
    @classmethod
    def build_data(cls, config):
      train, evaluation = super().build_data(config)
      return _HookedData(train, hook), evaluation

  return Hooked


def abstract_state(config):
  """The tokenizer train state's ShapeDtypeStructs on one device (a restore target)."""
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  task = TokenizerTask(config, mesh, total_steps=config.total_steps, warmup_steps=2)
  abstract = jax.eval_shape(task.init_state, jax.random.PRNGKey(0))
  return checkpointing.abstract_like(abstract, sharding.param_shardings(abstract, mesh))


def state_of(workdir, config, step=None):
  """The full train state of a workdir's checkpoint (latest by default), on the host."""
  mngr = checkpointing.CheckpointManager(workdir, async_save=False)
  state, _ = mngr.restore(abstract_state(config), step)
  mngr.close()
  return jax.device_get(state)


def leaves_equal(a, b) -> int:
  """The number of leaves that differ (bitwise) between two pytrees of the same structure."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  return sum(not np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def all_finite(tree) -> bool:
  return all(
    np.all(np.isfinite(x)) for x in jax.tree.leaves(tree) if np.issubdtype(x.dtype, np.inexact)
  )
