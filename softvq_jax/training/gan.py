"""The discriminator side of the tokenizer objective: its state and its update.

The discriminator's params, optimizer state, BatchNorm/spectral-norm statistics and the LeCam
EMAs live in `TrainState.extra["disc"]`, so they are sharded and checkpointed with everything
else. The D update runs inside the same jitted step as the generator update, on the generator's
(stop-gradient) reconstructions, with its own optimizer and gradient clipping (SPEC §1.4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from softvq_jax.models import discriminators
from softvq_jax.objectives import adversarial
from softvq_jax.objectives import tokenizer as tokenizer_objective


def init(module, key: jax.Array, x: jax.Array, tx: optax.GradientTransformation, frozen=None):
  """extra["disc"] for a fresh run: params, statistics, optimizer state and LeCam EMAs."""
  params, stats = discriminators.init_discriminator(module, key, x, frozen)
  return {
    "params": params,
    "stats": stats,
    "opt_state": tx.init(params),
    "lecam": adversarial.init_lecam_ema(),
  }


def update(
  disc: dict,
  disc_apply,
  tx: optax.GradientTransformation,
  real: jax.Array,
  fake: jax.Array,
  key: jax.Array,
  step: jax.Array,
  objective: tokenizer_objective.TokenizerObjective,
) -> tuple[dict, dict]:
  """One discriminator step; `step` is 1-based. Returns (new extra["disc"], "gan/" metrics).

  The loss is `objectives.tokenizer.discriminator_loss`. Before `disc_start` it is exactly 0 (the
  reference then runs Adam on zero gradients, a no-op); the update is skipped so that decoupled
  weight decay does not shrink D either, while the BatchNorm/spectral statistics and LeCam EMAs
  still advance as in the reference.
  """
  (_, (metrics, aux)), grads = jax.value_and_grad(
    tokenizer_objective.discriminator_loss, argnums=1, has_aux=True
  )(objective, disc["params"], disc["stats"], disc_apply, real, fake, step, disc["lecam"], key)
  updates, opt_state = tx.update(grads, disc["opt_state"], disc["params"])
  params = optax.apply_updates(disc["params"], updates)
  active = jnp.asarray(step) >= objective.gan.start
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(active, n, o), new, old)
  metrics["gan/disc_grad_norm"] = optax.global_norm(grads)
  new = {
    "params": keep(params, disc["params"]),
    "opt_state": keep(opt_state, disc["opt_state"]),
    "stats": aux["disc_state"],
    "lecam": aux["lecam"],
  }
  return new, metrics
