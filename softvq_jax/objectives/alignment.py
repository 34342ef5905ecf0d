"""REPA-style alignment of the latent tokens to frozen teacher features (reference VQModel.encode).

The projector (`models/projector.py`, an MLP D->h->h->C, reference `build_mlp`) maps the latents
to the teacher width; it is trained with the tokenizer and kept in the train state's `extra`.
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

import jax
import jax.numpy as jnp

from softvq_jax.models.functional import l2_normalize
from softvq_jax.models.image_ops import area_matrix
from softvq_jax.models.projector import check_mode

Dtype = Any


def alignment_loss(
  z_proj: jax.Array, teacher: jax.Array, mode: str = "repeat", key: jax.Array | None = None
) -> jax.Array:
  """-cos(z_proj, teacher) averaged: z_proj (B, L, C) from AlignProjector(mode), teacher (B, N, C).

  `key` is needed by 'avg_1d_shuffle' only. Returns a float32 scalar (unweighted).
  """
  check_mode(mode)
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
  cos = jnp.sum(l2_normalize(z) * l2_normalize(t), axis=-1)  # (B, L or N)
  return -jnp.mean(cos)
