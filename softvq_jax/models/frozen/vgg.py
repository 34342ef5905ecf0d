"""VGG16 feature trunk and the LPIPS perceptual distance (taming-transformers / richzhang v0.1).

LPIPS(x, y) = sum_l mean_hw( w_l . (n(f_l(s(x))) - n(f_l(s(y))))^2 ), where s is the fixed
ScalingLayer, f_l the VGG16 relu1_2 / relu2_2 / relu3_3 / relu4_3 / relu5_3 activations, n the
unit-norm over channels (eps 1e-10 added to the norm) and w_l a non-negative 1x1 head (no bias).
Images are NHWC in [-1, 1]. The reference puts Dropout(0.5) before each head and its training
script leaves it active (VQLoss.train() undoes LPIPS().eval()): that bug is not reproduced here,
the heads have no dropout at all. Loaders for the published weight files: weights/lpips.py.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# (name, torchvision `features` index, in channels, out channels); a 2x2 max-pool precedes
# conv2_1, conv3_1, conv4_1 and conv5_1 (features 4, 9, 16, 23).
VGG16_CONVS = (
  ("conv1_1", 0, 3, 64),
  ("conv1_2", 2, 64, 64),
  ("conv2_1", 5, 64, 128),
  ("conv2_2", 7, 128, 128),
  ("conv3_1", 10, 128, 256),
  ("conv3_2", 12, 256, 256),
  ("conv3_3", 14, 256, 256),
  ("conv4_1", 17, 256, 512),
  ("conv4_2", 19, 512, 512),
  ("conv4_3", 21, 512, 512),
  ("conv5_1", 24, 512, 512),
  ("conv5_2", 26, 512, 512),
  ("conv5_3", 28, 512, 512),
)
TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
TAP_CHANNELS = (64, 128, 256, 512, 512)
MIN_SIZE = 16  # relu5_3 is at 1/16 resolution; smaller images leave it empty
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10


class VGG16Features(nn.Module):
  """torchvision VGG16 `features` up to relu5_3: (B, H, W, 3) -> the five TAPS activations."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
    taps = []
    x = x.astype(self.dtype)
    for name, _, _, cout in VGG16_CONVS:
      if name.endswith("_1") and name != "conv1_1":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))  # floor, as torch MaxPool2d(2, 2)
      x = nn.Conv(
        cout,
        (3, 3),
        padding=((1, 1), (1, 1)),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        precision=self.precision,
        name=name,
      )(x)
      x = nn.relu(x)
      if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
        taps.append(x)
    return tuple(taps)


def scale_inputs(x: jax.Array) -> jax.Array:
  """LPIPS ScalingLayer: (x - shift) / scale per RGB channel, x in [-1, 1]."""
  return (x.astype(jnp.float32) - jnp.asarray(SHIFT, jnp.float32)) / jnp.asarray(SCALE, jnp.float32)


def normalize_channels(f: jax.Array, eps: float = NORM_EPS) -> jax.Array:
  """f / (||f||_C + eps) in float32 (taming `normalize_tensor`).

  The norm uses the double-where trick so that a pixel whose channels are all exactly zero (a
  dead ReLU column) gets a zero gradient instead of 0/0 = NaN; the forward value is unchanged.
  """
  f = f.astype(jnp.float32)
  sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
  pos = sq > 0
  norm = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
  return f / (norm + eps)


class LinHeads(nn.Module):
  """The five LPIPS 1x1 heads (C_l -> 1, no bias, no dropout): lin0..lin4 kernels (C_l, 1)."""

  @nn.compact
  def __call__(self, diffs: tuple[jax.Array, ...]) -> jax.Array:
    total = 0.0
    for i, d in enumerate(diffs):
      head = nn.Dense(1, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32, name=f"lin{i}")
      total = total + jnp.mean(head(d)[..., 0], axis=(1, 2))  # (B,)
    return total


class LPIPS(nn.Module):
  """LPIPS-VGG16 distance: x, y (B, H, W, 3) in [-1, 1] -> (B,) float32. Params {vgg, lin}.

  `x_feats`: x's `normalized_features` computed beforehand (a training step reuses the real
  images' features, which need no gradient); then only y goes through VGG here.
  """

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array, x_feats=None) -> jax.Array:
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(
        f"LPIPS expects two NHWC RGB batches of the same shape (B, H, W, 3) in [-1, 1]; got "
        f"{x.shape} and {y.shape}."
      )
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(
        f"LPIPS needs images of at least {MIN_SIZE}x{MIN_SIZE} (VGG16 relu5_3 is at 1/16 "
        f"resolution); got {x.shape[1]}x{x.shape[2]}."
      )
    b = x.shape[0]
    vgg = VGG16Features(self.dtype, self.param_dtype, self.precision, name="vgg")
    if x_feats is None:
      feats = vgg(scale_inputs(jnp.concatenate([x, y], axis=0)))  # one pass over 2B images
      fx = tuple(normalize_channels(f[:b]) for f in feats)
      fy = tuple(normalize_channels(f[b:]) for f in feats)
    else:
      fx, fy = x_feats, tuple(normalize_channels(f) for f in vgg(scale_inputs(y)))
    diffs = tuple(jnp.square(a - c) for a, c in zip(fx, fy, strict=True))
    return LinHeads(name="lin")(diffs)


def normalized_features(vgg_params, x: jax.Array, dtype: Dtype = jnp.float32, precision=None):
  """n(f_l(s(x))) for the five taps, float32: LPIPS's `x_feats` (params["vgg"], no gradient)."""
  model = VGG16Features(dtype, precision=precision)
  feats = model.apply({"params": vgg_params}, scale_inputs(x))
  return tuple(normalize_channels(f) for f in feats)
