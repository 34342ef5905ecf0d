"""Frozen DINOv2 teacher for the REPA-style alignment loss (SPEC §1.4, reference `repa_model`).

The reference builds `timm.create_model('vit_large_patch14_dinov2.lvd142m', pretrained=True,
img_size=S, patch_size=16)`: timm resamples the 14x14 patch kernel to 16x16 (FlexiViT PI-resize)
and the 37x37 position grid to (S/16)^2 (bicubic, antialiased, prefix slot kept) at load time,
which `weights.dinov2.load_teacher_params` reproduces with `weights/resample.py`. Features are
`forward_features(imagenet_normalise(x))[:, num_prefix_tokens:]`: all blocks, final LayerNorm,
cls (and register) tokens dropped -> (B, (S/16)^2, C). Blocks are DINOv2's (LayerScale, LN eps
1e-6, exact GELU; ViT-g uses a packed SwiGLU MLP). Register (reg4) checkpoints add prefix tokens
and a position grid without a cls slot (timm `no_embed_class=True`).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.models import vit
from softvq_jax.models.image_ops import imagenet_normalize

Dtype = Any
HEAD_DIM = 64  # every DINOv2 size uses 64-dim heads
# loss.align.teacher_variant -> (depth, width, MLP hidden, SwiGLU MLP). "tiny" is for tests.
TEACHER_VARIANTS = {
  "S": (12, 384, 1536, False),  # vit_small_patch14_dinov2.lvd142m
  "B": (12, 768, 3072, False),  # vit_base_patch14_dinov2.lvd142m
  "L": (24, 1024, 4096, False),  # vit_large_patch14_dinov2.lvd142m (the reference recipe)
  "G": (40, 1536, 4096, True),  # vit_giant_patch14_dinov2.lvd142m
  "tiny": (2, 128, 512, False),
  "tiny_g": (2, 128, 256, True),
}


def teacher_variant(name: str) -> tuple[int, int, int, bool]:
  """(depth, width, mlp_hidden, swiglu) of `loss.align.teacher_variant`; clear error if unknown."""
  if name not in TEACHER_VARIANTS:
    raise ValueError(
      f"loss.align.teacher_variant: unknown DINOv2 variant {name!r}, choose from "
      f"{sorted(TEACHER_VARIANTS)}"
    )
  return TEACHER_VARIANTS[name]


# ----------------------------------------------------------------------------- model
class _SwiGLUSizes(nn.Module):
  """Hyper-parameters shared by the SwiGLU block and the stack of them."""

  num_heads: int
  mlp_hidden: int
  ln_eps: float = 1e-6
  attn_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32


class SwiGLUBlock(_SwiGLUSizes):
  """DINOv2-g block: pre-LN attention and packed SwiGLU MLP (fc1 -> silu(a) * b -> fc2)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    e, pd = x.shape[-1], self.param_dtype
    h = vit.layer_norm("norm1", self.ln_eps, pd)(x).astype(self.dtype)
    h = vit.Attention(
      self.num_heads, attn_impl=self.attn_impl, dtype=self.dtype, param_dtype=pd, name="attn"
    )(h)
    x = x + vit.LayerScale(param_dtype=pd, name="ls1")(h).astype(x.dtype)
    h = vit.layer_norm("norm2", self.ln_eps, pd)(x).astype(self.dtype)
    h = _SwiGLUMlp(self.mlp_hidden, e, self.dtype, pd, name="mlp")(h)
    return x + vit.LayerScale(param_dtype=pd, name="ls2")(h).astype(x.dtype)


class _SwiGLUMlp(nn.Module):
  hidden: int
  out_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    a, b = jnp.split(dense(2 * self.hidden, "fc1")(x), 2, axis=-1)  # timm: act(x1) * x2
    return dense(self.out_dim, "fc2")(nn.silu(a) * b)


class _SwiGLUTransformer(_SwiGLUSizes):
  depth: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.depth):
      x = SwiGLUBlock(
        self.num_heads,
        self.mlp_hidden,
        self.ln_eps,
        self.attn_impl,
        self.dtype,
        self.param_dtype,
        name=f"blocks_{i}",
      )(x)
    return vit.layer_norm("norm", self.ln_eps, self.param_dtype)(x)


class DinoV2(nn.Module):
  """ImageNet-normalised (B, g*p, g*p, 3) -> final-norm patch tokens (B, g*g, width) float32."""

  grid: int
  patch_size: int = 16
  depth: int = 24
  width: int = 1024
  mlp_hidden: int = 4096
  swiglu: bool = False
  num_reg_tokens: int = 0
  ln_eps: float = 1e-6
  attn_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def num_prefix_tokens(self) -> int:
    return 1 + self.num_reg_tokens

  def setup(self):
    e, pd = self.width, self.param_dtype
    init = nn.initializers.normal(0.02)
    self.patch_embed = vit.PatchEmbed(e, self.patch_size, self.dtype, pd)
    self.cls_token = self.param("cls_token", init, (1, 1, e), pd)
    if self.num_reg_tokens:
      self.reg_token = self.param("reg_token", init, (1, self.num_reg_tokens, e), pd)
    cls_slot = 0 if self.num_reg_tokens else 1  # reg4 models: timm no_embed_class=True
    self.pos_embed = self.param("pos_embed", init, (1, cls_slot + self.grid**2, e), pd)
    heads = e // HEAD_DIM if e >= HEAD_DIM else 1
    if self.swiglu:
      t = _SwiGLUTransformer(
        heads, self.mlp_hidden, self.ln_eps, self.attn_impl, self.dtype, pd, depth=self.depth
      )
    else:
      t = vit.Transformer(
        self.depth,
        heads,
        mlp_ratio=self.mlp_hidden / e,
        layerscale_init=1e-5,
        approximate_gelu=False,
        ln_eps=self.ln_eps,
        final_norm=True,
        attn_impl=self.attn_impl,
        dtype=self.dtype,
        param_dtype=pd,
      )
    self.transformer = t
    nn.share_scope(self, self.transformer)  # blocks_i / norm live at the top level

  def __call__(self, x: jax.Array) -> jax.Array:
    b, e = x.shape[0], self.width
    h = self.patch_embed(x.astype(self.dtype)).astype(jnp.float32)  # (B, N, E)
    pos = self.pos_embed.astype(jnp.float32)
    prefix = [jnp.broadcast_to(self.cls_token.astype(jnp.float32), (b, 1, e))]
    if self.num_reg_tokens:
      reg = self.reg_token.astype(jnp.float32)
      prefix.append(jnp.broadcast_to(reg, (b, self.num_reg_tokens, e)))
      h = jnp.concatenate([*prefix, h + pos], axis=1)  # pos on patches only
    else:
      h = jnp.concatenate([*prefix, h], axis=1) + pos
    h = self.transformer(h)
    return h[:, self.num_prefix_tokens :].astype(jnp.float32)


def model_from_params(params, *, dtype: Dtype = jnp.float32, attn_impl: str | None = None):
  """The DinoV2 module matching a parameter tree (sizes read from the array shapes)."""
  width = int(params["cls_token"].shape[-1])
  depth = sum(1 for k in params if k.startswith("blocks_"))
  fc1_out = int(params["blocks_0"]["mlp"]["fc1"]["kernel"].shape[1])
  fc2_in = int(params["blocks_0"]["mlp"]["fc2"]["kernel"].shape[0])
  swiglu = fc1_out == 2 * fc2_in
  n_reg = int(params["reg_token"].shape[1]) if "reg_token" in params else 0
  n_grid = int(params["pos_embed"].shape[1]) - (0 if n_reg else 1)
  grid = math.isqrt(n_grid)
  patch = int(params["patch_embed"]["proj"]["kernel"].shape[0])
  return DinoV2(grid, patch, depth, width, fc2_in, swiglu, n_reg, attn_impl=attn_impl, dtype=dtype)


def teacher_features(
  params, x: jax.Array, *, dtype: Dtype = jnp.float32, attn_impl: str | None = None
) -> jax.Array:
  """x (B, S, S, 3) in [-1, 1] -> frozen DINOv2 patch features (B, (S/16)^2, C), no gradient.

  S must be the resolution the teacher params were loaded for (`load_teacher_params`).
  """
  model = model_from_params(params, dtype=dtype, attn_impl=attn_impl)
  s = model.grid * model.patch_size
  if x.shape[1:3] != (s, s):
    raise ValueError(
      f"DINOv2 teacher params were loaded for {s}px inputs (grid {model.grid}, patch "
      f"{model.patch_size}) but got images {x.shape}; load them with image_size={x.shape[1]}"
    )
  params = jax.lax.stop_gradient(params)
  out = model.apply({"params": params}, imagenet_normalize(jax.lax.stop_gradient(x)))
  return jax.lax.stop_gradient(out)


def teacher_dim(params) -> int:
  """Width C of the teacher features (the projector's output size)."""
  return int(params["cls_token"].shape[-1])


def abstract_params(variant: str, grid: int, patch_size: int = 16, num_reg_tokens: int = 0):
  """ShapeDtypeStruct tree of a teacher's parameters."""
  depth, width, hidden, swiglu = teacher_variant(variant)
  model = DinoV2(grid, patch_size, depth, width, hidden, swiglu, num_reg_tokens)
  x = jnp.zeros((1, grid * patch_size, grid * patch_size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
