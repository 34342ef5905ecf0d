"""DINO discriminator: frozen DINO ViT-S/16 trunk + five trainable heads (reference DinoDisc).

The trunk is NOT a submodule: its parameters are frozen, passed as a call argument (a jit argument
of the train step, never in the discriminator's "params", so no optimizer state or weight decay
touches them) and wrapped in stop_gradient; gradients still flow to the input images. The trunk is
given as a function
  trunk_fn(trunk_params, x (B, H, W, 3) in [-1, 1], key or None, train) -> 5 x (B, 196, 384)
returning the features after patch-embed+pos and after blocks 2, 5, 8, 11 as tokens[1:] + cls
(the ImageNet normalisation and random crop / resize to 224 happen inside the trunk; `key` drives
the crop, from the "augment" rng stream when train=True).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.models.discriminators.dino_heads import DinoHeads, HeadSizes

Dtype = Any
TrunkFn = Callable[[Any, jax.Array, jax.Array | None, bool], Sequence[jax.Array]]


class DinoDiscriminator(HeadSizes):
  """x (B, H, W, 3) in [-1, 1] -> per-token logits (B, 5 * 196) in float32."""

  trunk_fn: TrunkFn | None = None  # required; a default only so the shared sizes come first
  num_heads: int = 5

  @classmethod
  def from_config(cls, disc_cfg: Any, dtype: Dtype = jnp.float32) -> DinoDiscriminator:
    """From the `loss.disc` section: the trunk of `dino_variant` (S, or tiny for tests)."""
    from softvq_jax.models.frozen import dino

    depth, width, heads = dino.TRUNK_VARIANTS[disc_cfg.get("dino_variant", "S")]
    return cls(trunk_fn=dino.trunk_fn(dtype=dtype, depth=depth, width=width, num_heads=heads))

  @nn.compact
  def __call__(
    self, x: jax.Array, trunk_params: Any, train: bool = True, update_stats: bool = False
  ) -> jax.Array:
    if self.trunk_fn is None:
      raise ValueError("DinoDiscriminator needs trunk_fn (models/frozen/dino.trunk_fn)")
    key = self.make_rng("augment") if train and self.has_rng("augment") else None
    feats = self.trunk_fn(jax.lax.stop_gradient(trunk_params), x, key, train)
    heads = DinoHeads(num_heads=self.num_heads, **self.head_kwargs(), name="heads")
    return heads(feats, train=train, update_stats=update_stats)
