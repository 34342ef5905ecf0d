"""PatchGAN discriminator (pix2pix NLayerDiscriminator, as the reference discriminator_patchgan.py).

NHWC. Layers (ndf=64, n_layers=3): conv k4 s2 (bias) -> LReLU(0.2); for n in 1..n_layers-1:
conv k4 s2 (no bias) -> BN -> LReLU; conv k4 s1 (no bias) -> BN -> LReLU; conv k4 s1 (bias) -> 1.
All convs pad 1 with zeros. Init as the reference: conv kernels N(0, 0.02), BN scale N(1, 0.02) and
bias 0; conv biases keep torch's default U(+-1/sqrt(fan_in)). BatchNorm eps 1e-5, torch momentum
0.1 (flax 0.9), statistics over the global batch (see batch_norm.py). No pretrained weights.
A 256x256 input gives (B, 30, 30, 1) float32 logits.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.models.discriminators.batch_norm import BatchNorm
from softvq_jax.models.discriminators.spectral_norm import SpectralConv

Dtype = Any


def _bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class PatchGANDiscriminator(nn.Module):
  """x (B, H, W, C) in [-1, 1] -> per-patch logits (B, H', W', 1) in float32."""

  ndf: int = 64
  n_layers: int = 3
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @classmethod
  def from_config(cls, disc_cfg: Any, dtype: Dtype = jnp.float32) -> PatchGANDiscriminator:
    """From the `loss.disc` section: `ndf`, `n_layers` (computed in float32, as before)."""
    del dtype
    return cls(ndf=disc_cfg.get("ndf", 64), n_layers=disc_cfg.get("n_layers", 3))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True, update_stats: bool = False) -> jax.Array:
    def conv(features, stride, use_bias, name):
      return SpectralConv(
        features,
        (4, 4),
        strides=stride,
        padding=1,
        use_bias=use_bias,
        spectral=False,
        kernel_init=nn.initializers.normal(0.02),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=name,
      )

    def norm(name):
      return BatchNorm(
        momentum=self.bn_momentum,
        epsilon=self.bn_eps,
        scale_init=_bn_scale_init,
        param_dtype=self.param_dtype,
        name=name,
      )

    size = list(x.shape[1:3])
    for n in range(self.n_layers + 2):  # k4 p1: stride 2 -> s // 2, stride 1 -> s - 1
      size = [s // 2 if n < self.n_layers else s - 1 for s in size]
    if min(size) < 1:
      raise ValueError(f"PatchGAN input {x.shape[1:3]} is too small for n_layers={self.n_layers}")
    act = lambda h: nn.leaky_relu(h, 0.2)
    h = act(conv(self.ndf, 2, True, "conv_0")(x))
    mult = 1
    for n in range(1, self.n_layers + 1):
      mult = min(2**n, 8)
      stride = 2 if n < self.n_layers else 1
      h = conv(self.ndf * mult, stride, False, f"conv_{n}")(h)
      h = act(norm(f"norm_{n}")(h, train=train, update_stats=update_stats))
    h = conv(1, 1, True, f"conv_{self.n_layers + 1}")(h)
    return h.astype(jnp.float32)
