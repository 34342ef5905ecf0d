"""DINO (v1) ViT-S/16 discriminator-trunk weights: official / timm state dicts -> Flax params."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging

from softvq_jax.models.frozen.dino import DEPTH, HEADS, WIDTH, abstract_params
from softvq_jax.weights import io
from softvq_jax.weights import vit as vit_weights

CONFIG_KEY = "loss.disc.dino_path"
WHAT = "DINO ViT-S/16 discriminator trunk weights"


def _entries(depth: int):
  return [
    (("cls_token",), "cls_token", "id"),
    (("pos_embed",), "pos_embed", "id"),
    (("patch_embed", "proj", "kernel"), "patch_embed.proj.weight", "conv"),
    (("patch_embed", "proj", "bias"), "patch_embed.proj.bias", "id"),
    *vit_weights.block_entries(depth, layerscale=False, final_norm=False),
  ]


def params_from_state_dict(
  sd: dict[str, np.ndarray], *, depth: int = DEPTH, width: int = WIDTH, num_heads: int = HEADS
) -> dict[str, Any]:
  """Official DINO / timm `vit_small_patch16_224.dino` state dict -> trunk params (numpy).

  Extra `head.*` and the unused final `norm.*` are ignored; the qkv k-bias is zeroed. Tensors
  must be float and finite; errors name the file of a state dict read with `io.load_state_dict`.
  """
  sd = io.strip_wrapper_prefix(sd)
  entries = _entries(depth)
  extra_blocks = tuple(f"blocks.{i}." for i in range(depth, 64))  # deeper blocks are unused
  ignore = ("head.", "norm.", *extra_blocks)
  vit_weights.check_keys(sd, [k for _, k, _ in entries], ignore, WHAT, CONFIG_KEY)
  tree = vit_weights.to_tree(sd, entries)
  vit_weights.check_shapes(tree, abstract_params(depth, width, num_heads), WHAT, CONFIG_KEY, sd)
  for i in range(depth):
    bias = tree[f"blocks_{i}"]["attn"]["qkv"]["bias"]
    c = bias.shape[0] // 3
    bias[c : 2 * c] = 0.0  # the reference zeroes the k-bias (softmax is invariant to it)
  return tree


def load_dino_params(
  path: str | os.PathLike | None,
  *,
  random_init: bool = False,
  key: jax.Array | None = None,
) -> dict[str, Any]:
  """Frozen DINO ViT-S/16 params from `dino_deitsmall16_pretrain` (.safetensors, or .pth with
  torch) or timm `vit_small_patch16_224.dino` safetensors.

  A missing file raises WeightFileError naming `loss.disc.dino_path`, unless `random_init`
  (`loss.random_init`, for tests / smoke runs), which returns random weights of the exact shapes
  with a warning. Returned arrays are float32 numpy; pass them to the train step as a frozen
  argument (never to an optimizer).
  """
  if random_init and not (path and io.expand_path(path).is_file()):
    logging.warning(
      "DINO discriminator trunk: RANDOM weights (loss.random_init=True, %s=%r not found); "
      "the GAN loss is meaningless for real training",
      CONFIG_KEY,
      path,
    )
    key = jax.random.key(0) if key is None else key
    return vit_weights.random_like(abstract_params(), key)
  sd = io.load_state_dict(path, WHAT, CONFIG_KEY)
  return params_from_state_dict(sd)
