"""Inception-v3 FID network in Flax: the TF 2015 graph that ADM's evaluator runs.

Layer structure and parameter names follow pytorch-fid's `FIDInceptionV3` port (torchvision
Inception3 with the FID patches: average pools that exclude padding, a max pool in Mixed_7c), so
its published `pt_inception-2015-12-05-6726825d.pth` loads by renaming. The input pipeline is the
TF graph's: float [0, 255] images, TF1 bilinear resize to 299 (`align_corners=False`, no half-pixel
centres), then (x - 128) / 128. Outputs: `pool` (pool_3, B x 2048), `spatial` (first 7 channels of
mixed_6/conv = Mixed_6d.branch1x1, flattened in HWC order, B x 2023) and `logits` (B x 1008,
pool @ softmax weights without bias, which is what ADM feeds its softmax).
Its weights are read by `weights/inception.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023
BN_EPS = 1e-3


# ----------------------------------------------------------------------------------------------
# Input pipeline of the TF graph


def _tf1_resize_indices(in_size: int, out_size: int):
  """TF1 ResizeBilinear (align_corners=False, legacy scaler) source indices and lerp weights."""
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.arange(out_size, dtype=np.float32) * scale  # float32 as in TF's kernel
  floor = np.floor(src)
  lower = np.maximum(floor, 0).astype(np.int32)
  upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int32)
  return lower, upper, (src - floor).astype(np.float32)


def resize_bilinear_tf1(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(B, H, W, C) float32 -> (B, h, w, C) with TF1's legacy bilinear resize, op by op."""
  y0, y1, wy = _tf1_resize_indices(images.shape[1], size[0])
  x0, x1, wx = _tf1_resize_indices(images.shape[2], size[1])
  top, bottom = images[:, y0], images[:, y1]
  wx = jnp.asarray(wx)[None, None, :, None]
  wy = jnp.asarray(wy)[None, :, None, None]
  tl, tr = top[:, :, x0], top[:, :, x1]
  bl, br = bottom[:, :, x0], bottom[:, :, x1]
  top = tl + (tr - tl) * wx
  bottom = bl + (br - bl) * wx
  return top + (bottom - top) * wy


def preprocess(images: jax.Array, resize: bool = True) -> jax.Array:
  """uint8/float [0, 255] NHWC -> the network input: TF1 resize to 299, then (x - 128) / 128."""
  x = images.astype(jnp.float32)
  if resize and x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    x = resize_bilinear_tf1(x, (INPUT_SIZE, INPUT_SIZE))
  return (x - 128.0) / 128.0


# ----------------------------------------------------------------------------------------------
# Layers


class FrozenBatchNorm(nn.Module):
  """Inference batch norm with stored statistics: (x - mean) * scale / sqrt(var + eps) + bias."""

  eps: float = BN_EPS
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    mean = self.param("mean", nn.initializers.zeros, (c,), self.param_dtype)
    var = self.param("var", nn.initializers.ones, (c,), self.param_dtype)
    mult = scale.astype(jnp.float32) * jax.lax.rsqrt(var.astype(jnp.float32) + self.eps)
    y = (x.astype(jnp.float32) - mean.astype(jnp.float32)) * mult + bias.astype(jnp.float32)
    return y.astype(x.dtype)


class BasicConv2d(nn.Module):
  """Conv (no bias) -> frozen BN (eps 1e-3) -> ReLU; `padding` is (pad_h, pad_w) as in torch."""

  features: int
  kernel_size: tuple[int, int] = (1, 1)
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(
      self.features,
      self.kernel_size,
      strides=(self.strides, self.strides),
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      precision=self.precision,
      kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal"),
      name="conv",
    )(x)
    x = FrozenBatchNorm(param_dtype=self.param_dtype, name="bn")(x)
    return nn.relu(x)


def _avg_pool_same(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool that ignores padding (TF 'SAME' avg pool)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class _Block(nn.Module):
  """Shared fields of the Inception blocks; `conv(...)` builds a named BasicConv2d."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  def conv(self, name, features, kernel=(1, 1), strides=1, padding=(0, 0)):
    return BasicConv2d(
      features,
      kernel,
      strides,
      padding,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      precision=self.precision,
      name=name,
    )


class InceptionA(_Block):
  """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (pool excludes padding)."""

  pool_features: int = 32

  @nn.compact
  def __call__(self, x):
    b1 = self.conv("branch1x1", 64)(x)
    b5 = self.conv("branch5x5_1", 48)(x)
    b5 = self.conv("branch5x5_2", 64, (5, 5), padding=(2, 2))(b5)
    b3 = self.conv("branch3x3dbl_1", 64)(x)
    b3 = self.conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(b3)
    b3 = self.conv("branch3x3dbl_3", 96, (3, 3), padding=(1, 1))(b3)
    bp = self.conv("branch_pool", self.pool_features)(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

  @nn.compact
  def __call__(self, x):
    b3 = self.conv("branch3x3", 384, (3, 3), strides=2)(x)
    bd = self.conv("branch3x3dbl_1", 64)(x)
    bd = self.conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(bd)
    bd = self.conv("branch3x3dbl_3", 96, (3, 3), strides=2)(bd)
    return jnp.concatenate([b3, bd, _max_pool_3s2(x)], axis=-1)


class InceptionC(_Block):
  """17x17 block with factorised 7x7 convolutions; channels [0:192] are the 1x1 branch."""

  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
    b1 = self.conv("branch1x1", 192)(x)
    b7 = self.conv("branch7x7_1", c7)(x)
    b7 = self.conv("branch7x7_2", c7, row[0], padding=row[1])(b7)
    b7 = self.conv("branch7x7_3", 192, col[0], padding=col[1])(b7)
    bd = self.conv("branch7x7dbl_1", c7)(x)
    bd = self.conv("branch7x7dbl_2", c7, col[0], padding=col[1])(bd)
    bd = self.conv("branch7x7dbl_3", c7, row[0], padding=row[1])(bd)
    bd = self.conv("branch7x7dbl_4", c7, col[0], padding=col[1])(bd)
    bd = self.conv("branch7x7dbl_5", 192, row[0], padding=row[1])(bd)
    bp = self.conv("branch_pool", 192)(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

  @nn.compact
  def __call__(self, x):
    b3 = self.conv("branch3x3_1", 192)(x)
    b3 = self.conv("branch3x3_2", 320, (3, 3), strides=2)(b3)
    b7 = self.conv("branch7x7x3_1", 192)(x)
    b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
    b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
    b7 = self.conv("branch7x7x3_4", 192, (3, 3), strides=2)(b7)
    return jnp.concatenate([b3, b7, _max_pool_3s2(x)], axis=-1)


class InceptionE(_Block):
  """8x8 block with split 1x3/3x1 convolutions; `pool` is "avg" (Mixed_7b) or "max" (Mixed_7c)."""

  pool: str = "avg"

  @nn.compact
  def __call__(self, x):
    b1 = self.conv("branch1x1", 320)(x)
    b3 = self.conv("branch3x3_1", 384)(x)
    b3 = jnp.concatenate(
      [
        self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
        self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3),
      ],
      axis=-1,
    )
    bd = self.conv("branch3x3dbl_1", 448)(x)
    bd = self.conv("branch3x3dbl_2", 384, (3, 3), padding=(1, 1))(bd)
    bd = jnp.concatenate(
      [
        self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
        self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd),
      ],
      axis=-1,
    )
    if self.pool == "avg":
      pooled = _avg_pool_same(x)
    elif self.pool == "max":  # the FID graph's quirk in its last block
      pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
    bp = self.conv("branch_pool", 192)(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
  """The FID Inception-v3: uint8/float [0, 255] NHWC images -> {pool, spatial, logits}.

  `resize_input=False` skips the resize to 299 (only for inputs already at the size you want; the
  ADM protocol always resizes). `logits_bias=True` adds the classifier bias (not ADM's IS).
  """

  resize_input: bool = True
  logits_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)

    def conv(name, features, kernel=(1, 1), strides=1, padding=(0, 0)):
      return BasicConv2d(features, kernel, strides, padding, name=name, **kw)

    x = preprocess(images, self.resize_input).astype(self.dtype)  # (B, 299, 299, 3)
    x = conv("Conv2d_1a_3x3", 32, (3, 3), strides=2)(x)  # (B, 149, 149, 32)
    x = conv("Conv2d_2a_3x3", 32, (3, 3))(x)  # 147
    x = conv("Conv2d_2b_3x3", 64, (3, 3), padding=(1, 1))(x)  # 147
    x = _max_pool_3s2(x)  # 73
    x = conv("Conv2d_3b_1x1", 80)(x)  # 73
    x = conv("Conv2d_4a_3x3", 192, (3, 3))(x)  # 71
    x = _max_pool_3s2(x)  # (B, 35, 35, 192)
    x = InceptionA(pool_features=32, name="Mixed_5b", **kw)(x)  # 256
    x = InceptionA(pool_features=64, name="Mixed_5c", **kw)(x)  # 288
    x = InceptionA(pool_features=64, name="Mixed_5d", **kw)(x)  # 288
    x = InceptionB(name="Mixed_6a", **kw)(x)  # (B, 17, 17, 768)
    x = InceptionC(channels_7x7=128, name="Mixed_6b", **kw)(x)
    x = InceptionC(channels_7x7=160, name="Mixed_6c", **kw)(x)
    x = InceptionC(channels_7x7=160, name="Mixed_6d", **kw)(x)
    # mixed_6/conv:0 is Mixed_6d.branch1x1 (after ReLU) = channels [0:192] of the block output.
    spatial = x[..., :SPATIAL_CHANNELS].astype(jnp.float32)
    spatial = spatial.reshape(spatial.shape[0], -1)  # (B, 17 * 17 * 7) in HWC order
    x = InceptionC(channels_7x7=192, name="Mixed_6e", **kw)(x)
    x = InceptionD(name="Mixed_7a", **kw)(x)  # (B, 8, 8, 1280)
    x = InceptionE(pool="avg", name="Mixed_7b", **kw)(x)  # 2048
    x = InceptionE(pool="max", name="Mixed_7c", **kw)(x)  # (B, 8, 8, 2048)
    pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # pool_3: (B, 2048)
    kernel = self.param(
      "fc_kernel", nn.initializers.normal(0.01), (POOL_DIM, NUM_CLASSES), self.param_dtype
    )
    bias = self.param("fc_bias", nn.initializers.zeros, (NUM_CLASSES,), self.param_dtype)
    logits = classifier_logits(pool, kernel, bias if self.logits_bias else None, self.precision)
    return {"pool": pool, "spatial": spatial, "logits": logits}


def classifier_logits(pool, kernel, bias=None, precision=jax.lax.Precision.HIGHEST) -> jax.Array:
  """pool (B, 2048) @ kernel (2048, 1008) [+ bias], float32; ADM's IS uses no bias."""
  logits = jnp.dot(pool, kernel.astype(jnp.float32), precision=precision)
  return logits if bias is None else logits + bias.astype(jnp.float32)


def apply_features(params: Mapping, images: jax.Array) -> dict[str, jax.Array]:
  """ADM's Inception features of uint8 NHWC images (any size): {pool, spatial, logits}.

  Pure function of (params, images), for `features.make_feature_fn(apply_features, params)`.
  """
  return InceptionV3FID().apply({"params": params}, images)


def param_shapes(model: InceptionV3FID | None = None) -> dict:
  """The Flax parameter tree of `model` as ShapeDtypeStructs (no allocation)."""
  model = model or InceptionV3FID()
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))[
    "params"
  ]
