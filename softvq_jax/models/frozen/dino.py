"""Frozen DINO (v1) ViT-S/16: the feature trunk of the DINO discriminator (reference DinoDisc).

As the reference `FrozenDINOSmallNoDrop`: x in [-1, 1] is ImageNet-normalised in float32, then
(if H and W > 224) with probability 0.5 randomly cropped to 224 (one crop for the whole batch),
otherwise resized to 224 (torch 'area' = adaptive average pooling when H > 224, else bicubic
a=-0.75 without antialiasing; identity at 224). ViT-S/16: 384 wide, 12 blocks, 6 heads, cls
token, learned pos embed (1, 197, 384), no LayerScale, LayerNorm eps 1e-6, tanh-GELU MLP, qkv
bias with the k-bias zeroed at load (a no-op for softmax, kept for fidelity). The final norm is
not applied. Features: after embedding (+pos) and after blocks 2, 5, 8, 11, each read out as
`tokens[1:] + cls` (the cls token ADDED to every patch token) -> 5 x (B, 196, 384).
Without a crop key (train=False) the input is always resized (the reference has no eval path).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.models import vit
from softvq_jax.models.image_ops import area_matrix, bicubic_matrix, imagenet_normalize

Dtype = Any
IMAGE_SIZE = 224
PATCH_SIZE = 16
TAPS = (2, 5, 8, 11)
# (depth, width, heads) of DINO ViT-S/16.
DEPTH, WIDTH, HEADS = 12, 384, 6
# loss.disc.dino_variant -> (depth, width, heads). "S" is the published ViT-S/16; "tiny" (random
# weights only) keeps the graph (224 px, taps after blocks 2/5/8/11) at a fraction of the cost.
TRUNK_VARIANTS = {"S": (DEPTH, WIDTH, HEADS), "tiny": (DEPTH, 32, 2)}


# ----------------------------------------------------------------------------- input processing
def resize_to(x: jax.Array, size: int) -> jax.Array:
  """(B, H, W, C) -> (B, size, size, C) as the reference: area if H > size, else bicubic."""
  h, w = x.shape[1:3]
  if (h, w) == (size, size):
    return x  # torch bicubic at scale 1 is the identity
  fn = area_matrix if h > size else bicubic_matrix
  wy = jnp.asarray(fn(h, size), jnp.float32)
  wx = jnp.asarray(fn(w, size), jnp.float32)
  return jnp.einsum("ih,jw,bhwc->bijc", wy, wx, x, precision=jax.lax.Precision.HIGHEST)


def preprocess(x: jax.Array, key: jax.Array | None, size: int = IMAGE_SIZE) -> jax.Array:
  """x (B, H, W, 3) in [-1, 1] -> ImageNet-normalised (B, size, size, 3) float32.

  With `key` and H, W > size: a random size x size crop (one position per batch) with
  probability 0.5, else the resize; without `key` always the resize.
  """
  x = imagenet_normalize(x)
  h, w = x.shape[1:3]
  resized = resize_to(x, size)
  if key is None or not (h > size and w > size):
    return resized
  k_coin, k_i, k_j = jax.random.split(key, 3)
  do_crop = jax.random.uniform(k_coin) <= 0.5
  i = jax.random.randint(k_i, (), 0, h - size + 1)
  j = jax.random.randint(k_j, (), 0, w - size + 1)
  crop = jax.lax.dynamic_slice(x, (0, i, j, 0), (x.shape[0], size, size, x.shape[3]))
  return jnp.where(do_crop, crop, resized)


# ----------------------------------------------------------------------------- the ViT
class DinoViT(nn.Module):
  """ImageNet-normalised (B, 224, 224, 3) -> [embed, block taps...] each (B, 196, width).

  Each feature is read out as tokens[1:] + tokens[:1] (cls added to every patch token).
  """

  depth: int = DEPTH
  width: int = WIDTH
  num_heads: int = HEADS
  patch_size: int = PATCH_SIZE
  image_size: int = IMAGE_SIZE
  taps: Sequence[int] = TAPS
  ln_eps: float = 1e-6
  attn_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    e, n = self.width, (self.image_size // self.patch_size) ** 2
    pd = self.param_dtype
    init = nn.initializers.normal(0.02)
    self.patch_embed = vit.PatchEmbed(e, self.patch_size, self.dtype, pd)  # patchify + matmul
    self.cls_token = self.param("cls_token", init, (1, 1, e), pd)
    self.pos_embed = self.param("pos_embed", init, (1, 1 + n, e), pd)
    self.transformer = vit.Transformer(
      self.depth,
      self.num_heads,
      layerscale_init=None,
      approximate_gelu=True,
      qkv_bias=True,
      ln_eps=self.ln_eps,
      final_norm=False,
      attn_impl=self.attn_impl,
      dtype=self.dtype,
      param_dtype=pd,
    )
    nn.share_scope(self, self.transformer)  # blocks_i live directly at the top level

  def __call__(self, x: jax.Array) -> list[jax.Array]:
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"DinoViT expects {self.image_size}px inputs, got {x.shape}")
    b = x.shape[0]
    h = self.patch_embed(x.astype(self.dtype)).astype(jnp.float32)  # (B, N, E)
    cls = jnp.broadcast_to(self.cls_token.astype(jnp.float32), (b, 1, self.width))
    h = jnp.concatenate([cls, h], axis=1) + self.pos_embed.astype(jnp.float32)
    readout = lambda t: t[:, 1:].astype(jnp.float32) + t[:, :1].astype(jnp.float32)
    taps = self.transformer(h, return_layers=tuple(self.taps))[1] if self.taps else []
    return [readout(h)] + [readout(t) for t in taps]


def trunk_fn(
  *,
  dtype: Dtype = jnp.float32,
  attn_impl: str | None = None,
  depth: int = DEPTH,
  width: int = WIDTH,
  num_heads: int = HEADS,
):
  """The `trunk_fn(trunk_params, x, key, train) -> 5 x (B, 196, width)` DinoDiscriminator takes.

  x (B, H, W, 3) in [-1, 1]; the random crop uses `key` only when train=True.
  """
  model = DinoViT(depth, width, num_heads, attn_impl=attn_impl, dtype=dtype)

  def fn(trunk_params, x, key, train):
    x = preprocess(x, key if train else None)
    return model.apply({"params": trunk_params}, x)

  return fn


def abstract_params(depth: int = DEPTH, width: int = WIDTH, num_heads: int = HEADS):
  """ShapeDtypeStruct tree of the trunk's parameters."""
  model = DinoViT(depth, width, num_heads)
  x = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
