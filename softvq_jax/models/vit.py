"""ViT building blocks shared by the tokenizer, the frozen teachers and the discriminators.

Parameter names mirror timm's (`norm1`, `attn.qkv`, `ls1.gamma`, `mlp.fc1`, ...) so that the
converters are a rename plus a transpose. Norms, softmax and RoPE rotations run in float32;
matmuls run in `dtype` (bf16 on accelerators) with `param_dtype` (f32) parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.models import attention as attention_lib

Dtype = Any

# timm initialises ViT linears with trunc_normal(std=0.02) and zero bias.
default_kernel_init = nn.initializers.truncated_normal(stddev=0.02)


def layer_norm(name: str, eps: float = 1e-6, param_dtype: Dtype = jnp.float32) -> nn.LayerNorm:
  """LayerNorm computed in float32 whatever the compute dtype."""
  return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=param_dtype, name=name)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates adjacent channel pairs (2i, 2i+1) of `x` by `angles` (the reference convention).

  x: (B, T, H, hd); angles: (H, T, hd/2) or (T, hd/2). Computed in float32.
  """
  if angles.ndim == 3:
    angles = jnp.transpose(angles, (1, 0, 2))  # (T, H, hd/2)
  else:
    angles = angles[:, None, :]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  x_even, x_odd = xf[..., 0], xf[..., 1]
  out = jnp.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


class Mlp(nn.Module):
  """fc1 -> GELU (exact erf, or tanh approximation) -> fc2."""

  hidden_dim: int
  out_dim: int | None = None
  approximate_gelu: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = default_kernel_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_dim = self.out_dim or x.shape[-1]
    dense = lambda n, name: nn.Dense(
      n, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init, name=name
    )
    x = dense(self.hidden_dim, "fc1")(x)
    x = nn.gelu(x, approximate=self.approximate_gelu)
    return dense(out_dim, "fc2")(x)


class Attention(nn.Module):
  """Multi-head self-attention with a packed qkv projection (rows [q | k | v], head-major).

  Optional 2-D RoPE is applied to q and k of the token range [rope_start, rope_start + T_rope)
  only (the image tokens; cls and latent tokens stay unrotated), as in the reference.
  `attn_impl` picks the kernel (models/attention.py: per-head on CPU by default, 'cudnn' for the
  fused GPU kernel).
  """

  num_heads: int
  qkv_bias: bool = True
  qk_norm: bool = False
  attn_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = default_kernel_init

  @nn.compact
  def __call__(
    self, x: jax.Array, rope_angles: jax.Array | None = None, rope_start: int = 0
  ) -> jax.Array:
    b, t, e = x.shape
    if e % self.num_heads:
      raise ValueError(f"width {e} is not divisible by num_heads {self.num_heads}")
    hd = e // self.num_heads
    qkv = nn.Dense(
      3 * e,
      use_bias=self.qkv_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=self.kernel_init,
      name="qkv",
    )(x)
    q, k, v = jnp.split(qkv.reshape(b, t, 3, self.num_heads, hd), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # (B, T, H, hd)
    if self.qk_norm:
      q = layer_norm("q_norm", param_dtype=self.param_dtype)(q).astype(self.dtype)
      k = layer_norm("k_norm", param_dtype=self.param_dtype)(k).astype(self.dtype)
    if rope_angles is not None:
      n = rope_angles.shape[-2]
      sl = slice(rope_start, rope_start + n)
      q = q.at[:, sl].set(apply_rope(q[:, sl], rope_angles))
      k = k.at[:, sl].set(apply_rope(k[:, sl], rope_angles))
    out = attention_lib.attention(q, k, v, self.attn_impl)
    out = out.reshape(b, t, e)
    return nn.Dense(
      e,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=self.kernel_init,
      name="proj",
    )(out)


class LayerScale(nn.Module):
  """Per-channel multiplier `gamma` (DINOv2 LayerScale)."""

  init_value: float = 1e-5
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gamma = self.param(
      "gamma", nn.initializers.constant(self.init_value), (x.shape[-1],), self.param_dtype
    )
    return x * gamma.astype(x.dtype)


class Block(nn.Module):
  """Pre-LN transformer block: x + ls1(attn(norm1 x)); x + ls2(mlp(norm2 x)).

  `layerscale_init=None` drops LayerScale (DINO v1, plain ViTs). The residual stream stays in
  the input dtype (float32), branch outputs are cast back to it.
  """

  num_heads: int
  mlp_ratio: float = 4.0
  layerscale_init: float | None = 1e-5
  approximate_gelu: bool = False
  qkv_bias: bool = True
  qk_norm: bool = False
  ln_eps: float = 1e-6
  attn_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x: jax.Array, rope_angles: jax.Array | None = None, rope_start: int = 0
  ) -> jax.Array:
    e = x.shape[-1]
    res_dtype = x.dtype

    def scale(name):
      if self.layerscale_init is None:
        return lambda y: y
      return LayerScale(self.layerscale_init, self.param_dtype, name=name)

    h = layer_norm("norm1", self.ln_eps, self.param_dtype)(x).astype(self.dtype)
    h = Attention(
      self.num_heads,
      qkv_bias=self.qkv_bias,
      qk_norm=self.qk_norm,
      attn_impl=self.attn_impl,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="attn",
    )(h, rope_angles, rope_start)
    x = x + scale("ls1")(h).astype(res_dtype)
    h = layer_norm("norm2", self.ln_eps, self.param_dtype)(x).astype(self.dtype)
    h = Mlp(
      int(e * self.mlp_ratio),
      approximate_gelu=self.approximate_gelu,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="mlp",
    )(h)
    return x + scale("ls2")(h).astype(res_dtype)


class _PatchProj(nn.Module):
  """The patch projection's params, laid out as a conv's: kernel (p, p, C, E), bias (E,)."""

  width: int
  patch_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array) -> jax.Array:
    p, c = self.patch_size, patches.shape[-1] // self.patch_size**2
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (p, p, c, self.width), self.param_dtype
    )
    bias = self.param("bias", nn.initializers.zeros, (self.width,), self.param_dtype)
    kernel = kernel.reshape(p * p * c, self.width).astype(self.dtype)
    return jnp.dot(patches.astype(self.dtype), kernel) + bias.astype(self.dtype)


class PatchEmbed(nn.Module):
  """Non-overlapping p x p patches -> width-E tokens, (B, S, S, 3) -> (B, (S/p)^2, E).

  A stride-p conv written as patchify + matmul (same params, same result): XLA's CPU backend is
  pathologically slow on the gradient of large-stride convs, and on TPU/GPU this is a plain GEMM.
  """

  width: int
  patch_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch_size
    b, h, w, c = x.shape
    if h % p or w % p:
      raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // p) * (w // p), p * p * c)  # (B, N, p*p*C) in (row, col, channel) order
    proj = _PatchProj(self.width, p, self.dtype, self.param_dtype, name="proj")
    return proj(x)


class Transformer(nn.Module):
  """A stack of `Block`s named blocks_{i}, then an optional final LayerNorm `norm`.

  rope_angles: None or (depth, H, T_rope, hd/2), block i gets rope_angles[i].
  `remat` rematerialises each block in the backward pass (memory for compute).
  `return_layers` lists block indices whose outputs are also returned (for feature taps).
  """

  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  layerscale_init: float | None = 1e-5
  approximate_gelu: bool = False
  qkv_bias: bool = True
  ln_eps: float = 1e-6
  final_norm: bool = True
  remat: bool = False
  attn_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    rope_angles: jax.Array | None = None,
    rope_start: int = 0,
    return_layers: Sequence[int] = (),
  ):
    block_cls = nn.remat(Block, static_argnums=(3,)) if self.remat else Block
    taps = []
    for i in range(self.depth):
      x = block_cls(
        self.num_heads,
        mlp_ratio=self.mlp_ratio,
        layerscale_init=self.layerscale_init,
        approximate_gelu=self.approximate_gelu,
        qkv_bias=self.qkv_bias,
        ln_eps=self.ln_eps,
        attn_impl=self.attn_impl,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f"blocks_{i}",
      )(x, None if rope_angles is None else rope_angles[i], rope_start)
      if i in return_layers:
        taps.append(x)
    if self.final_norm:
      x = layer_norm("norm", self.ln_eps, self.param_dtype)(x)
    if return_layers:
      return x, taps
    return x


# Backbone sizes: name -> (depth, width, heads). Model variants are config entries using these.
VIT_VARIANTS = {
  "mu": (2, 64, 4),  # tiny, for tests and CPU smoke runs
  "Ti": (12, 192, 3),
  "S": (12, 384, 6),
  "B": (12, 768, 12),
  "L": (24, 1024, 16),
  "g": (40, 1536, 24),
}


def vit_variant(name: str) -> tuple[int, int, int]:
  """(depth, width, heads) of a named backbone; a clear error for an unknown name."""
  if name not in VIT_VARIANTS:
    raise ValueError(f"unknown ViT variant {name!r}; choose one of {sorted(VIT_VARIANTS)}")
  return VIT_VARIANTS[name]
