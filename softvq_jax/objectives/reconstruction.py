"""Pixel reconstruction loss of the tokenizer (SPEC §1.4; reference VQLoss `rec_loss`).

`loss.rec_type`: 'l2' (mean squared error, the recipe) or 'l1' (mean absolute error), averaged
over every element of the batch and computed in float32 whatever the images' dtype. The weight
(`loss.rec_weight`) is applied by the tokenizer objective (objectives/tokenizer.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

REC_TYPES = ("l2", "l1")


def check_rec_type(kind: str) -> None:
  if kind not in REC_TYPES:
    raise ValueError(
      f"loss.rec_type: unknown reconstruction loss {kind!r}, choose from {REC_TYPES}"
    )


def reconstruction_loss(x: jax.Array, x_rec: jax.Array, kind: str = "l2") -> jax.Array:
  """mean((x_rec - x)^2) ('l2') or mean(|x_rec - x|) ('l1'): a float32 scalar.

  x, x_rec: images of the same shape (B, H, W, C), any float dtype. Gradients flow to both.
  """
  check_rec_type(kind)
  diff = x_rec.astype(jnp.float32) - x.astype(jnp.float32)
  return jnp.mean(jnp.square(diff)) if kind == "l2" else jnp.mean(jnp.abs(diff))
