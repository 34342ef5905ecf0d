"""Trainable heads of the DINO discriminator (VAR-style, reference discriminator_dino.py).

One head per DINO feature map (B, T, C) channels-last (T = 196, C = 384):
  SN-Conv1d(C, C, k=1) -> BN -> LReLU(0.2)
  residual: (f(h) + h) / sqrt(2), f = SN-Conv1d(C, C, k=9, circular padding 4) -> BN -> LReLU(0.2)
  SN-Conv1d(C, 1, k=1)                                   -> per-token logits (B, T)
All convs have a bias and torch's default init; spectral norm: 1 power iteration, eps 1e-12;
BN = SyncBatchNorm (eps 1e-6, torch momentum 0.1) over the global batch. The reference runs the
discriminator in train mode in both the generator and the discriminator passes (VQLoss.train()),
so BN uses batch statistics in both: call with train=True (the default) in both passes; the
running statistics are tracked (update_stats=True) but never used by the reference recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from softvq_jax.models.discriminators.batch_norm import BatchNorm
from softvq_jax.models.discriminators.spectral_norm import SpectralConv

Dtype = Any


class HeadSizes(nn.Module):
  """Hyper-parameters shared by a head, the set of heads and the DINO discriminator."""

  kernel_size: int = 9
  norm_eps: float = 1e-6
  bn_momentum: float = 0.9
  spectral: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def head_kwargs(self) -> dict[str, Any]:
    names = ("kernel_size", "norm_eps", "bn_momentum", "spectral", "dtype", "param_dtype")
    return {k: getattr(self, k) for k in names}


class DinoHead(HeadSizes):
  """(B, T, C) -> (B, T) logits in float32."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True, update_stats: bool = False) -> jax.Array:
    c = x.shape[-1]

    def conv(features, k, name):
      return SpectralConv(
        features,
        (k,),
        padding="CIRCULAR",
        spectral=self.spectral,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=name,
      )

    def block(h, k, prefix):
      h = conv(c, k, f"{prefix}_conv")(h, update_stats)
      h = BatchNorm(
        self.bn_momentum, self.norm_eps, param_dtype=self.param_dtype, name=f"{prefix}_norm"
      )(h, train=train, update_stats=update_stats)
      return nn.leaky_relu(h, 0.2)

    h = block(x, 1, "block")
    h = (block(h, self.kernel_size, "res") + h) * (1.0 / np.sqrt(2.0))
    out = conv(1, 1, "out_conv")(h, update_stats)  # (B, T, 1)
    return out[..., 0].astype(jnp.float32)


class DinoHeads(HeadSizes):
  """List of feature maps [(B, T, C)] * num_heads -> concatenated logits (B, num_heads * T)."""

  num_heads: int = 5

  @nn.compact
  def __call__(
    self, feats: Sequence[jax.Array], train: bool = True, update_stats: bool = False
  ) -> jax.Array:
    if len(feats) != self.num_heads:
      raise ValueError(f"DinoHeads expects {self.num_heads} feature maps, got {len(feats)}")
    outs = [
      DinoHead(**self.head_kwargs(), name=f"heads_{i}")(f, train=train, update_stats=update_stats)
      for i, f in enumerate(feats)
    ]
    return jnp.concatenate(outs, axis=1)
