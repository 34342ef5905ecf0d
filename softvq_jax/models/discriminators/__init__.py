"""Discriminators for the tokenizer's GAN loss: a name -> class registry and uniform init/apply.

Every discriminator is a linen module called as `module(x, [frozen,] train=, update_stats=)` with
x (B, H, W, 3) in [-1, 1]; its variables are {"params": ..., <state collections>} where the state
("batch_stats", and "spectral" for spectral-norm models) is a plain pytree kept in the train state.
`frozen` is the DINO trunk's parameters for "dino" (None for "patchgan").
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.models.discriminators.dino_disc import DinoDiscriminator
from softvq_jax.models.discriminators.patchgan import PatchGANDiscriminator

DISCRIMINATORS = {"patchgan": PatchGANDiscriminator, "dino": DinoDiscriminator}


def _registered(name: str) -> type[nn.Module]:
  if name not in DISCRIMINATORS:
    raise ValueError(
      f"loss.disc.name: unknown discriminator {name!r}, choose from {sorted(DISCRIMINATORS)}"
    )
  return DISCRIMINATORS[name]


def build_discriminator(name: str, **kwargs: Any) -> nn.Module:
  """DISCRIMINATORS[name](**kwargs); "dino" needs `trunk_fn` (see dino_disc.py)."""
  return _registered(name)(**kwargs)


def discriminator_from_config(disc_cfg: Any, dtype: Any = jnp.float32) -> nn.Module:
  """The discriminator named by `loss.disc.name`, built by its class's `from_config`."""
  return _registered(disc_cfg.name).from_config(disc_cfg, dtype)


def init_discriminator(
  module: nn.Module, key: jax.Array, x: jax.Array, frozen: Any = None
) -> tuple[Any, dict]:
  """(params, state) of a discriminator for inputs shaped like x."""
  k_params, k_aug = jax.random.split(key)
  args = (x,) if frozen is None else (x, frozen)
  variables = module.init({"params": k_params, "augment": k_aug}, *args, train=True)
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def make_disc_apply(
  module: nn.Module, frozen: Any = None, train: bool = True, update_stats: bool = True
):
  """disc_apply(params, state, x, key) -> (logits, new_state), as the losses in adversarial.py use.

  train=True uses batch statistics in BatchNorm (the reference runs D in train mode in both the G
  and D passes); update_stats=True advances the running statistics and the spectral-norm power
  iteration (torch train mode) and returns the new state; with False the state is returned as is.
  """
  args_tail = () if frozen is None else (frozen,)

  def disc_apply(params, state, x, key):
    variables = {"params": params, **state}
    kw = dict(train=train, update_stats=update_stats, rngs={"augment": key})
    if update_stats and state:
      logits, new_state = module.apply(variables, x, *args_tail, mutable=list(state), **kw)
      return logits, dict(new_state)
    return module.apply(variables, x, *args_tail, **kw), state

  return disc_apply
