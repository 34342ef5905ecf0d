"""The alignment projector: trainable MLP from latent tokens to the teacher's feature width.

Dense(D->h)-SiLU-Dense(h->h)-SiLU-Dense(h->C) (reference `build_mlp`, h = `loss.align.proj_dim`,
torch-default init); trained with the tokenizer, kept in the train state's `extra`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.models.functional import torch_default_bias_init, torch_default_kernel_init

Dtype = Any
# loss.align.mode choices (objectives/alignment.py implements them; config.validate reads this).
ALIGN_MODES = ("repeat", "global", "avg_1d", "avg_1d_shuffle")


def check_mode(mode: str) -> None:
  """A ValueError naming the choices for an unknown mode (direct calls; configs: validate)."""
  if mode not in ALIGN_MODES:
    raise ValueError(f"loss.align.mode: unknown alignment mode {mode!r}, choose from {ALIGN_MODES}")


class AlignProjector(nn.Module):
  """z_q (B, L, D) -> (B, L, out_dim); with mode='global' the token mean -> (B, 1, out_dim)."""

  hidden: int = 1024
  out_dim: int = 1024
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, mode: str = "repeat") -> jax.Array:
    check_mode(mode)
    if mode == "global":
      z = jnp.mean(z.astype(jnp.float32), axis=1, keepdims=True)
    h = z.astype(self.dtype)
    for i, n in enumerate((self.hidden, self.hidden, self.out_dim)):
      h = nn.Dense(
        n,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=torch_default_kernel_init,
        bias_init=torch_default_bias_init(h.shape[-1]),
        name=f"fc{i + 1}",
      )(h)
      if i < 2:
        h = nn.silu(h)
    return h.astype(jnp.float32)
