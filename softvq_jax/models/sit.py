"""SiT / DiT generators (adaLN-Zero transformers) on 1-D token sequences or 2-D latent grids.

`patch_size=1` is the reference "/1" model for SoftVQ tokens: (B, L, D) channels-last in and out,
Dense embedder, fixed interleaved 1-D sin/cos position embedding. `patch_size>1` is the 2-D "/p"
baseline on (B, H, W, C) latents (conv patchify, 2-D MAE sincos, unpatchify). DiT is the same
network with `learn_sigma=True` (2C outputs: eps | variance interpolation) and integer timesteps.
Parameter names mirror the reference state dict so the converter is a rename plus a transpose.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from softvq_jax.models.vit import Attention, Mlp

Dtype = Any
xavier = nn.initializers.xavier_uniform()

# name -> (depth, hidden, heads). "mu" is a tiny size for tests and CPU smoke runs.
SIT_VARIANTS = {
  "mu": (2, 64, 4),
  "S": (12, 384, 6),
  "B": (12, 768, 12),
  "L": (24, 1024, 16),
  "XL": (28, 1152, 16),
}


def sit_variant(name: str) -> tuple[int, int, int]:
  """(depth, hidden, heads) of a named size; accepts "XL" or "SiT-XL/1" style names."""
  key = name.split("-")[-1].split("/")[0] if "-" in name else name.split("/")[0]
  if key not in SIT_VARIANTS:
    raise ValueError(f"unknown SiT size {name!r}; choose one of {sorted(SIT_VARIANTS)}")
  return SIT_VARIANTS[key]


def sincos_1d(length: int, dim: int) -> np.ndarray:
  """(length, dim) float32, interleaved: pe[p, 2i] = sin(p w_i), pe[p, 2i+1] = cos(p w_i)."""
  if dim % 2:
    raise ValueError(f"sin/cos position embedding needs an even width, got {dim}")
  pos = np.arange(length, dtype=np.float32)[:, None]
  w = np.exp(np.arange(0, dim, 2, dtype=np.float32) * -(math.log(10000.0) / dim))
  pe = np.zeros((length, dim), np.float32)
  pe[:, 0::2] = np.sin(pos * w)
  pe[:, 1::2] = np.cos(pos * w)
  return pe


def _sincos_concat(dim: int, pos: np.ndarray) -> np.ndarray:
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(grid: int, dim: int) -> np.ndarray:
  """(grid*grid, dim) float32 MAE 2-D sincos: [emb(w) | emb(h)] halves, each [sin | cos]."""
  if dim % 4:
    raise ValueError(f"2-D sin/cos position embedding needs width % 4 == 0, got {dim}")
  gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
  emb = np.concatenate([_sincos_concat(dim // 2, gw), _sincos_concat(dim // 2, gh)], axis=1)
  return emb.astype(np.float32)


def timestep_embedding(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
  """(B,) -> (B, dim) [cos | sin] of t * f_i, f_i = exp(-ln(max_period) i / (dim/2)); t unscaled."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


class TimestepEmbedder(nn.Module):
  """Sinusoid(256) -> Dense -> SiLU -> Dense (named mlp_0 / mlp_2 as the reference's Sequential)."""

  hidden_size: int
  freq_dim: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    init = nn.initializers.normal(0.02)
    dense = lambda name: nn.Dense(
      self.hidden_size,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=init,
      name=name,
    )
    h = dense("mlp_0")(timestep_embedding(t, self.freq_dim).astype(self.dtype))
    return dense("mlp_2")(nn.silu(h))


class LabelEmbedder(nn.Module):
  """Class table with a null row `num_classes` when `dropout_prob > 0` (CFG); label dropout.

  In training (`train=True`) labels are replaced by the null label with prob `dropout_prob`
  (rng stream 'label_dropout'); `force_drop_ids` (B,) of 0/1 forces the choice instead.
  """

  num_classes: int
  hidden_size: int
  dropout_prob: float = 0.1
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, y, train: bool = False, force_drop_ids=None) -> jax.Array:
    rows = self.num_classes + int(self.dropout_prob > 0)
    table = self.param(
      "embedding_table", nn.initializers.normal(0.02), (rows, self.hidden_size), self.param_dtype
    )
    if force_drop_ids is not None:
      y = jnp.where(jnp.asarray(force_drop_ids) == 1, self.num_classes, y)
    elif train and self.dropout_prob > 0:
      drop = jax.random.uniform(self.make_rng("label_dropout"), y.shape) < self.dropout_prob
      y = jnp.where(drop, self.num_classes, y)
    return jnp.take(table, y, axis=0)


def _plain_ln(name: str) -> nn.LayerNorm:
  """LayerNorm without affine parameters, eps 1e-6, in float32."""
  return nn.LayerNorm(1e-6, dtype=jnp.float32, use_scale=False, use_bias=False, name=name)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale[:, None]) + shift[:, None]


class SiTBlock(nn.Module):
  """adaLN-Zero block: x + gate * f(LN(x) (1 + scale) + shift) for attention and the MLP."""

  num_heads: int
  mlp_ratio: float = 4.0
  qk_norm: bool = False
  attn_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    h = x.shape[-1]
    mod = nn.Dense(
      6 * h,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.zeros,
      name="adaLN_modulation",
    )(nn.silu(c))
    mod = mod.astype(jnp.float32)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
    ln = lambda name, z: _plain_ln(name)(z)
    a = modulate(ln("norm1", x), shift_msa, scale_msa).astype(self.dtype)
    a = Attention(
      self.num_heads,
      qkv_bias=True,
      qk_norm=self.qk_norm,
      attn_impl=self.attn_impl,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=xavier,
      name="attn",
    )(a)
    x = x + (gate_msa[:, None] * a).astype(x.dtype)
    m = modulate(ln("norm2", x), shift_mlp, scale_mlp).astype(self.dtype)
    m = Mlp(
      int(h * self.mlp_ratio),
      approximate_gelu=True,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=xavier,
      name="mlp",
    )(m)
    return x + (gate_mlp[:, None] * m).astype(x.dtype)


class FinalLayer(nn.Module):
  """LN (no affine) -> modulate(shift, scale) -> Dense(out); all zero-initialised."""

  out_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    h = x.shape[-1]
    dense = lambda n, name: nn.Dense(
      n,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.zeros,
      name=name,
    )
    mod = dense(2 * h, "adaLN_modulation")(nn.silu(c)).astype(jnp.float32)
    shift, scale = jnp.split(mod, 2, axis=-1)
    x = _plain_ln("norm_final")(x)
    return dense(self.out_dim, "linear")(modulate(x, shift, scale).astype(self.dtype))


class SiT(nn.Module):
  """SiT backbone. patch 1: x (B, L, C), L = input_size; else x (B, S, S, C), S = input_size.

  Returns (B, L, C_out) or (B, S, S, C_out) in float32, C_out = 2C when `learn_sigma` (DiT).
  `t`: (B,) times in [0, 1] (SiT) or integer steps in [0, 1000) (DiT), fed unscaled.
  `y`: (B,) int labels, `num_classes` is the null label when `class_dropout_prob > 0`.
  """

  input_size: int = 64
  in_channels: int = 32
  patch_size: int = 1
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  class_dropout_prob: float = 0.1
  learn_sigma: bool = False
  qk_norm: bool = False
  remat: bool = False
  attn_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def out_channels(self) -> int:
    return self.in_channels * (2 if self.learn_sigma else 1)

  @property
  def num_tokens(self) -> int:
    return self.input_size if self.patch_size == 1 else (self.input_size // self.patch_size) ** 2

  def pos_embed(self) -> np.ndarray:
    """(num_tokens, hidden) fixed position embedding (1-D interleaved or 2-D MAE sincos)."""
    if self.patch_size == 1:
      return sincos_1d(self.input_size, self.hidden_size)
    return sincos_2d(self.input_size // self.patch_size, self.hidden_size)

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.patch_size == 1:
      self.x_embedder = nn.Dense(self.hidden_size, kernel_init=xavier, name="x_embedder", **kw)
    else:
      p = self.patch_size
      # xavier on the (out, in*p*p) view, as the reference initialises its patch conv.
      init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2))
      self.x_embedder = nn.Conv(
        self.hidden_size, (p, p), strides=(p, p), padding="VALID", kernel_init=init, **kw
      )
    self.t_embedder = TimestepEmbedder(self.hidden_size, **kw)
    self.y_embedder = LabelEmbedder(
      self.num_classes, self.hidden_size, self.class_dropout_prob, self.param_dtype
    )
    block = nn.remat(SiTBlock) if self.remat else SiTBlock
    self.blocks = [
      block(self.num_heads, self.mlp_ratio, self.qk_norm, self.attn_impl, name=f"blocks_{i}", **kw)
      for i in range(self.depth)
    ]
    out = self.out_channels * self.patch_size**2
    self.final_layer = FinalLayer(out, **kw)

  def embed_conditions(self, t, y, train: bool = False, force_drop_ids=None):
    """(t_emb, y_emb), each (B, hidden); c = t_emb + y_emb."""
    return self.t_embedder(t), self.y_embedder(y, train, force_drop_ids)

  def __call__(self, x, t, y, train: bool = False, force_drop_ids=None) -> jax.Array:
    p = self.patch_size
    if p == 1:
      if x.ndim != 3 or x.shape[1:] != (self.input_size, self.in_channels):
        raise ValueError(
          f"SiT/1 expects x of shape (B, {self.input_size}, {self.in_channels}), got {x.shape}"
        )
      h = self.x_embedder(x.astype(self.dtype))
    else:
      s = self.input_size
      if x.ndim != 4 or x.shape[1:] != (s, s, self.in_channels):
        raise ValueError(
          f"SiT/{p} expects x of shape (B, {s}, {s}, {self.in_channels}), got {x.shape}"
        )
      h = self.x_embedder(x.astype(self.dtype))
      h = h.reshape(h.shape[0], -1, h.shape[-1])
    h = h.astype(jnp.float32) + jnp.asarray(self.pos_embed())[None]
    t_emb, y_emb = self.embed_conditions(t, y, train, force_drop_ids)
    c = (t_emb.astype(jnp.float32) + y_emb.astype(jnp.float32)).astype(self.dtype)
    for blk in self.blocks:
      h = blk(h, c)
    out = self.final_layer(h, c).astype(jnp.float32)
    if p == 1:
      return out
    g = self.input_size // p
    b, c_out = out.shape[0], self.out_channels
    out = out.reshape(b, g, g, p, p, c_out).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(b, g * p, g * p, c_out)


class DiT(SiT):
  """DiT: the SiT backbone with learned variance (2C outputs); t is the integer diffusion step."""

  learn_sigma: bool = True


MODELS = {"sit": SiT, "dit": DiT}


def build_generator(
  kind: str,
  variant: str,
  *,
  input_size: int,
  in_channels: int,
  patch_size: int = 1,
  **kw,
) -> SiT:
  """`kind` in MODELS ("sit"/"dit"), `variant` a SIT_VARIANTS size; other SiT fields in kw."""
  if kind not in MODELS:
    raise ValueError(f"unknown generator {kind!r}; choose one of {sorted(MODELS)}")
  depth, hidden, heads = sit_variant(variant)
  return MODELS[kind](
    input_size=input_size,
    in_channels=in_channels,
    patch_size=patch_size,
    hidden_size=hidden,
    depth=depth,
    num_heads=heads,
    **kw,
  )


def generator_from_train_config(m, **kw):
  """The SiT/DiT module of a training config's `model` section (a Mapping or ConfigDict) with the
  resolved `num_tokens` and `dim`; `kw` (dtype, remat, attn_impl, ...) go to the module."""
  return build_generator(
    m["name"],
    m["variant"],
    input_size=int(m["num_tokens"]),
    in_channels=int(m["dim"]),
    patch_size=int(m.get("patch_size", 1)),
    num_classes=int(m["num_classes"]),
    class_dropout_prob=float(m["class_dropout_prob"]),
    learn_sigma=m["name"] == "dit",
    qk_norm=bool(m.get("qk_norm", False)),
    **kw,
  )
