"""The discriminator side of the tokenizer objective: building it, its state, and its update.

The discriminator's params, optimizer state, BatchNorm/spectral-norm statistics and the LeCam
EMAs live in `TrainState.extra["disc"]`, so they are sharded and checkpointed with everything
else. The D update runs inside the same jitted step as the generator update, on the generator's
(stop-gradient) reconstructions, with its own optimizer and gradient clipping (SPEC §1.4).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from softvq_jax.models import discriminators
from softvq_jax.objectives import adversarial


def build(disc_cfg, dtype=jnp.float32):
  """The discriminator module named by `loss.disc.name` ('patchgan' needs no pretrained weights)."""
  name = disc_cfg.name
  if name == "patchgan":
    return discriminators.build_discriminator(
      "patchgan", ndf=disc_cfg.get("ndf", 64), n_layers=disc_cfg.get("n_layers", 3)
    )
  if name == "dino":
    from softvq_jax.models.frozen import dino

    depth, width, heads = dino.TRUNK_VARIANTS[disc_cfg.get("dino_variant", "S")]
    trunk = dino.trunk_fn(dtype=dtype, depth=depth, width=width, num_heads=heads)
    return discriminators.build_discriminator("dino", trunk_fn=trunk)
  return discriminators.build_discriminator(name)


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
  cfg: adversarial.AdvLossConfig,
) -> tuple[dict, dict]:
  """One discriminator step; `step` is 1-based. Returns (new extra["disc"], metrics).

  Before `disc_start` the D loss is exactly 0 (the reference then runs Adam on zero gradients,
  a no-op); the update is skipped so that decoupled weight decay does not shrink D either, while
  the BatchNorm/spectral statistics and LeCam EMAs still advance as in the reference.
  """
  (_, (stats, lecam, metrics)), grads = jax.value_and_grad(
    adversarial.discriminator_step_loss, has_aux=True
  )(disc["params"], disc["stats"], disc_apply, real, fake, key, step, disc["lecam"], cfg)
  updates, opt_state = tx.update(grads, disc["opt_state"], disc["params"])
  params = optax.apply_updates(disc["params"], updates)
  active = jnp.asarray(step) >= cfg.start
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(active, n, o), new, old)
  metrics["disc_grad_norm"] = optax.global_norm(grads)
  new = {
    "params": keep(params, disc["params"]),
    "opt_state": keep(opt_state, disc["opt_state"]),
    "stats": stats,
    "lecam": lecam,
  }
  return new, metrics


def last_layer_weight(nll_fn, adv_fn, params: Any, path: tuple[str, ...]) -> jax.Array:
  """Adaptive GAN weight ||d nll / d W|| / (||d g_adv / d W|| + 1e-4) at the last decoder kernel."""
  pick = lambda tree: _get(tree, path)
  g_nll = pick(jax.grad(nll_fn)(params))
  g_adv = pick(jax.grad(adv_fn)(params))
  return adversarial.adaptive_weight(g_nll, g_adv)


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree
