"""REPA-style alignment of the latent tokens to frozen teacher features (reference VQModel.encode).

`AlignProjector` is the trainable MLP Dense(D->h)-SiLU-Dense(h->h)-SiLU-Dense(h->C) (reference
`build_mlp`, h = `loss.align.proj_dim`, torch-default init); it lives in the tokenizer params.
`alignment_loss` is -cos(projected latents, teacher tokens), averaged over tokens and batch
(unweighted; the trainer multiplies by `loss.align.weight`). Modes (`loss.align.mode`):
- 'repeat' (the recipe): projected token l is compared with teacher tokens l*N/L ... (l+1)*N/L-1
  (raster order: horizontal strips); needs N % L == 0.
- 'global': the MEAN latent is projected (B, 1, C) and compared with the mean teacher token.
- 'avg_1d': teacher tokens adaptive-average-pooled (1-D, raster order) from N to L.
- 'avg_1d_shuffle': as avg_1d after one random permutation of the teacher tokens (needs a key).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from softvq_jax.models.discriminators.spectral_norm import (
  torch_default_bias_init,
  torch_default_kernel_init,
)
from softvq_jax.models.frozen.dino import area_matrix

Dtype = Any
ALIGN_MODES = ("repeat", "global", "avg_1d", "avg_1d_shuffle")


def _check_mode(mode: str) -> None:
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
    _check_mode(mode)
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


def _normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """torch F.normalize: x / max(||x||, eps) over the last axis."""
  n = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(n, eps)


def alignment_loss(
  z_proj: jax.Array, teacher: jax.Array, mode: str = "repeat", key: jax.Array | None = None
) -> jax.Array:
  """-cos(z_proj, teacher) averaged: z_proj (B, L, C) from AlignProjector(mode), teacher (B, N, C).

  `key` is needed by 'avg_1d_shuffle' only. Returns a float32 scalar (unweighted).
  """
  _check_mode(mode)
  z = z_proj.astype(jnp.float32)
  t = jax.lax.stop_gradient(teacher).astype(jnp.float32)
  (b, nl, c), n = z.shape, t.shape[1]
  if t.shape[0] != b or t.shape[2] != c:
    raise ValueError(
      f"alignment: projected latents {z.shape} and teacher features {t.shape} must share batch "
      "and channels (AlignProjector.out_dim must be the teacher width)"
    )
  if mode == "global":
    if nl != 1:
      raise ValueError(
        f"alignment mode 'global' expects the projected token MEAN (B, 1, C), got {z.shape}; "
        "call AlignProjector with mode='global'"
      )
    t = jnp.mean(t, axis=1, keepdims=True)
  elif mode == "repeat":
    if n % nl:
      raise ValueError(
        f"alignment mode 'repeat' needs the teacher token count N={n} to be a multiple of the "
        f"latent token count L={nl}; use loss.align.mode='avg_1d' or a matching resolution"
      )
    z = jnp.repeat(z, n // nl, axis=1)  # token l -> rows l*N/L ... (l+1)*N/L - 1
  else:
    if mode == "avg_1d_shuffle":
      if key is None:
        raise ValueError("alignment mode 'avg_1d_shuffle' needs a PRNG key")
      t = t[:, jax.random.permutation(key, n)]
    pool = jnp.asarray(area_matrix(n, nl), jnp.float32)  # torch adaptive_avg_pool1d
    t = jnp.einsum("ln,bnc->blc", pool, t, precision=jax.lax.Precision.HIGHEST)
  cos = jnp.sum(_normalize(z) * _normalize(t), axis=-1)  # (B, L or N)
  return -jnp.mean(cos)
