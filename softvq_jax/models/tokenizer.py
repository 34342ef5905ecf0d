"""The SoftVQ-VAE tokenizer (SPEC §1.1): ViT encoder -> quant_conv -> quantizer -> ViT decoder.

Token order as the reference: encoder [cls | patches | latent tokens] keeping the last L outputs;
decoder [cls | N mask tokens | latents] reading tokens 1..N back out as pixels. Parameter names
mirror the reference state dict (see `softvq_jax.weights.tokenizer`). Images are NHWC in [-1, 1].

`encode(x, train)` -> (z_q (B, L, D), info), `decode(z_q)` -> (B, S, S, 3),
`__call__(x, train)` -> (x_rec, info); `info` is documented in `softvq_jax.models.quantizers`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.models import rope, vit

Dtype = Any

# Path of the last decoder layer's kernel (adaptive GAN weight), for the linear to_pixel head.
LAST_LAYER = ("decoder", "to_pixel", "kernel")
# ... and for the conv head.
LAST_LAYER_CONV = ("decoder", "to_pixel", "conv_4", "kernel")

_trunc02 = nn.initializers.truncated_normal(stddev=0.02)
_normal02 = nn.initializers.normal(stddev=0.02)
_cls_init = nn.initializers.normal(stddev=1e-6)  # timm ViT cls token


def unpatchify(x: jax.Array, patch_size: int) -> jax.Array:
  """(B, N, p*p*3) -> (B, S, S, 3); within a patch the index is (py*p + px)*3 + c (reference)."""
  b, n, _ = x.shape
  p = patch_size
  h = int(round(n**0.5))
  if h * h != n:
    raise ValueError(f"{n} tokens do not form a square grid")
  x = x.reshape(b, h, h, p, p, 3).transpose(0, 1, 3, 2, 4, 5)  # (B, h, py, w, px, 3)
  return x.reshape(b, h * p, h * p, 3)


class ConvToPixel(nn.Module):
  """The reference's 'conv' head: 1x1 conv E->128, then 4 x [nearest x2, 3x3 conv] (p = 16)."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  channels: tuple[int, ...] = (128, 64, 32, 16, 3)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, e = x.shape
    h = int(round(n**0.5))
    x = x.reshape(b, h, h, e)
    for i, c in enumerate(self.channels):
      if i:
        x = jnp.repeat(jnp.repeat(nn.relu(x), 2, axis=1), 2, axis=2)
      k = 1 if i == 0 else 3
      x = nn.Conv(
        c, (k, k), padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv_{i}"
      )(x)
    return x


def _transformer(m) -> vit.Transformer:
  return vit.Transformer(
    m.depth,
    m.num_heads,
    layerscale_init=m.layerscale_init,
    remat=m.remat,
    attn_impl=m.attn_impl,
    dtype=m.dtype,
    param_dtype=m.param_dtype,
  )


class _ViTPart(nn.Module):
  """The hyper-parameters the tokenizer's encoder and decoder share (N = (S / patch)^2 tokens)."""

  image_size: int
  patch_size: int
  depth: int
  width: int
  num_heads: int
  num_latent_tokens: int
  layerscale_init: float = 1e-5
  use_rope: bool = False
  rope_theta: float = 10.0
  remat: bool = False
  attn_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def num_tokens(self) -> int:
    return (self.image_size // self.patch_size) ** 2


class ViTEncoder(_ViTPart):
  """[cls | patch_embed(x) | latent_tokens + latent_pos_embed] -> blocks -> norm -> last L tokens.

  pos_embed (1, 1+N, E) is always added to [cls, patches], also with RoPE (a reference oddity);
  mixed 2-D RoPE (learnable `freqs`) then rotates q/k of the N image tokens only.
  """

  def setup(self):
    e, n, nl = self.width, self.num_tokens, self.num_latent_tokens
    pd = self.param_dtype
    self.patch_embed = vit.PatchEmbed(e, self.patch_size, self.dtype, pd)
    self.cls_token = self.param("cls_token", _cls_init, (1, 1, e), pd)
    self.pos_embed = self.param("pos_embed", _trunc02, (1, 1 + n, e), pd)
    self.latent_tokens = self.param("latent_tokens", _normal02, (1, nl, e), pd)
    self.latent_pos_embed = self.param("latent_pos_embed", _trunc02, (1, nl, e), pd)
    if self.use_rope:
      hd = e // self.num_heads
      init = rope.mixed_freqs_init(self.depth, self.num_heads, hd, self.rope_theta)
      self.freqs = self.param("freqs", init, (2, self.depth, e // 2), pd)
    self.transformer = _transformer(self)
    nn.share_scope(self, self.transformer)  # blocks_i / norm live directly under "encoder"

  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, S, S, 3) -> latent token features (B, L, E) in float32."""
    b = x.shape[0]
    h = self.patch_embed(x.astype(self.dtype)).astype(jnp.float32)  # (B, N, E)
    cls = jnp.broadcast_to(self.cls_token.astype(jnp.float32), (b, 1, self.width))
    h = jnp.concatenate([cls, h], axis=1) + self.pos_embed.astype(jnp.float32)
    lat = (self.latent_tokens + self.latent_pos_embed).astype(jnp.float32)
    h = jnp.concatenate([h, jnp.broadcast_to(lat, (b, *lat.shape[1:]))], axis=1)
    angles = None
    if self.use_rope:
      angles = rope.grid_angles(self.freqs, self.image_size // self.patch_size, self.num_heads)
    h = self.transformer(h, angles, 1)
    return h[:, -self.num_latent_tokens :]


class ViTDecoder(_ViTPart):
  """[cls | mask_token x N | z + latent_pos_embed] -> blocks -> norm -> tokens 1..N -> pixels.

  pos_embed (incl. the cls slot) is added to [cls, mask tokens] only without RoPE (the decoder,
  unlike the encoder, honours use_rope -> no APE; the unused pos_embed stays a param so reference
  checkpoints round-trip). use_cls_token=False drops the cls slot (pos_embed (1, N, E)).
  """

  use_cls_token: bool = True
  pixel_head: str = "linear"

  def setup(self):
    e, n, nl, p = self.width, self.num_tokens, self.num_latent_tokens, self.patch_size
    pd = self.param_dtype
    self.mask_token = self.param("mask_token", _normal02, (1, 1, e), pd)
    self.latent_pos_embed = self.param("latent_pos_embed", _trunc02, (1, nl, e), pd)
    if self.use_cls_token:
      self.cls_token = self.param("cls_token", _cls_init, (1, 1, e), pd)
    self.pos_embed = self.param("pos_embed", _trunc02, (1, self.num_prefix + n, e), pd)
    if self.use_rope:
      hd = e // self.num_heads
      init = rope.mixed_freqs_init(self.depth, self.num_heads, hd, self.rope_theta)
      self.freqs = self.param("freqs", init, (2, self.depth, e // 2), pd)
    self.transformer = _transformer(self)
    nn.share_scope(self, self.transformer)
    if self.pixel_head == "linear":
      self.to_pixel = nn.Dense(p * p * 3, dtype=self.dtype, param_dtype=pd, kernel_init=_trunc02)
    elif self.pixel_head == "conv":
      self.to_pixel = ConvToPixel(self.dtype, pd)
    else:
      raise ValueError(f"model.to_pixel={self.pixel_head!r}; use 'linear' or 'conv'")

  @property
  def num_prefix(self) -> int:
    return 1 if self.use_cls_token else 0

  def __call__(self, z: jax.Array) -> jax.Array:
    """z (B, L, E) (post_quant_conv output) -> image (B, S, S, 3) in float32."""
    b, e, n = z.shape[0], self.width, self.num_tokens
    h = jnp.broadcast_to(self.mask_token.astype(jnp.float32), (b, n, e))
    if self.use_cls_token:
      cls = jnp.broadcast_to(self.cls_token.astype(jnp.float32), (b, 1, e))
      h = jnp.concatenate([cls, h], axis=1)
    if not self.use_rope:
      h = h + self.pos_embed.astype(jnp.float32)
    lat = z.astype(jnp.float32) + self.latent_pos_embed.astype(jnp.float32)
    h = jnp.concatenate([h, lat], axis=1)
    angles = None
    if self.use_rope:
      angles = rope.grid_angles(self.freqs, self.image_size // self.patch_size, self.num_heads)
    h = self.transformer(h, angles, self.num_prefix)
    h = h[:, self.num_prefix : self.num_prefix + n]
    out = self.to_pixel(h.astype(self.dtype))
    if self.pixel_head == "linear":
      out = unpatchify(out, self.patch_size)
    return out.astype(jnp.float32)


class Tokenizer(nn.Module):
  """encoder -> quant_conv Dense(E -> D, or 2D for KL) -> quantize -> post_quant_conv -> decoder.

  The encoder, decoder and quantizer are given as (unbound) modules, so each keeps its explicit
  hyper-parameters; they are adopted as the children "encoder", "decoder", "quantize".
  """

  encoder: ViTEncoder
  decoder: ViTDecoder
  quantize: nn.Module
  codebook_embed_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    factor = getattr(type(self.quantize), "quant_conv_factor", 1)
    # quant_conv runs in float32 (tiny E x D matmul): the latents feed the f32 quantizer logits.
    self.quant_conv = nn.Dense(
      self.codebook_embed_dim * factor,
      dtype=jnp.float32,
      param_dtype=self.param_dtype,
      precision=jax.lax.Precision.HIGHEST,
      kernel_init=_trunc02,
    )
    self.post_quant_conv = nn.Dense(
      self.decoder.width, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_trunc02
    )

  @property
  def last_layer(self) -> tuple[str, ...]:
    """Param path of the decoder's last kernel (for the adaptive GAN weight)."""
    return LAST_LAYER if self.decoder.pixel_head == "linear" else LAST_LAYER_CONV

  def encode(self, x: jax.Array, train: bool = False):
    """x (B, S, S, 3) in [-1, 1] -> z_q (B, L, D) float32, info dict."""
    z_e = self.quant_conv(self.encoder(x))  # (B, L, D) float32
    return self.quantize(z_e, train)

  def decode(self, z_q: jax.Array) -> jax.Array:
    """z_q (B, L, D) -> reconstruction (B, S, S, 3) float32 (not clipped)."""
    return self.decoder(self.post_quant_conv(z_q.astype(self.dtype)))

  def __call__(self, x: jax.Array, train: bool = False):
    z_q, info = self.encode(x, train)
    return self.decode(z_q), info
