"""The train state: one pytree holding everything a step reads and writes."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """params (f32), their EMA, optimizer state, step, base rng and any loss state in `extra`.

  `extra` is a dict for trainer-specific state (discriminator params and optimizer state,
  BatchNorm/spectral-norm statistics, LeCam EMAs); it is sharded and checkpointed like the rest.
  The per-step key is `fold_in(rng, step)`, so randomness does not depend on the topology.
  """

  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  extra: dict = flax.struct.field(default_factory=dict)

  @classmethod
  def create(cls, params, tx, rng, extra=None) -> TrainState:
    return cls(
      step=jnp.zeros((), jnp.int32),
      params=params,
      ema_params=jax.tree.map(jnp.copy, params),
      opt_state=tx.init(params),
      rng=rng,
      extra=extra or {},
    )

  def step_key(self) -> jax.Array:
    return jax.random.fold_in(self.rng, self.step)


def ema_update(ema: Any, params: Any, decay: float) -> Any:
  """ema <- decay * ema + (1 - decay) * params, in the params' dtype."""
  return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)
