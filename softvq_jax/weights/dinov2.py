"""DINOv2 alignment-teacher weights: timm / facebookresearch state dicts -> Flax params, with the
patch kernel PI-resized and the position grid resampled as timm's pretrained loading does."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging

from softvq_jax.models.frozen.dinov2 import TEACHER_VARIANTS, abstract_params, teacher_variant
from softvq_jax.weights import checks, io, resample
from softvq_jax.weights import vit as vit_weights

CONFIG_KEY = "loss.align.teacher_path"
WHAT = "DINOv2 alignment teacher weights"


def _to_timm_layout(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """facebookresearch DINOv2 -> timm layout (as timm `_convert_dinov2`); timm files pass through."""
  source = sd
  sd = {k: np.asarray(v) for k, v in io.strip_wrapper_prefix(sd).items()}
  sd.pop("mask_token", None)
  if "register_tokens" in sd:  # registers: timm keeps cls and reg out of the position grid
    sd["reg_token"] = sd.pop("register_tokens")
    sd["cls_token"] = sd["cls_token"] + sd["pos_embed"][:, :1]
    sd["pos_embed"] = sd["pos_embed"][:, 1:]
  out = {}
  for k, v in sd.items():
    if ".mlp.w12." in k:
      k = k.replace(".mlp.w12.", ".mlp.fc1.")
    elif ".mlp.w3." in k:
      k = k.replace(".mlp.w3.", ".mlp.fc2.")
    out[k] = v
  return checks.keep_source(out, source)


def params_from_state_dict(
  sd: dict[str, np.ndarray], *, variant: str = "L", image_size: int = 256, patch_size: int = 16
) -> dict[str, Any]:
  """timm-layout DINOv2 state dict -> teacher params at `patch_size` and `image_size` (numpy).

  The patch kernel is PI-resized (14 -> 16) and the position grid resampled to
  (image_size / patch_size)^2 as timm's pretrained loading does.
  """
  depth, width, _, _ = teacher_variant(variant)
  if image_size % patch_size:
    raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
  sd = _to_timm_layout(sd)
  if "cls_token" in sd and sd["cls_token"].shape[-1] != width:
    w = sd["cls_token"].shape[-1]
    found = [k for k, v in TEACHER_VARIANTS.items() if v[1] == w]
    raise checks.WeightValueError(
      f"{checks.where(sd)}{WHAT} (config key `{CONFIG_KEY}`): the file has width {w} "
      f"(variant {found or '?'}) but loss.align.teacher_variant={variant!r} needs width "
      f"{width}; set the variant to match"
    )
  n_reg = int(sd["reg_token"].shape[1]) if "reg_token" in sd else 0
  entries = [
    (("cls_token",), "cls_token", "id"),
    (("pos_embed",), "pos_embed", "id"),
    (("patch_embed", "proj", "kernel"), "patch_embed.proj.weight", "conv"),
    (("patch_embed", "proj", "bias"), "patch_embed.proj.bias", "id"),
    *vit_weights.block_entries(depth, layerscale=True, final_norm=True),
  ]
  if n_reg:
    entries.append((("reg_token",), "reg_token", "id"))
  vit_weights.check_keys(sd, [k for _, k, _ in entries], ("head.",), WHAT, CONFIG_KEY)
  tree = vit_weights.to_tree(sd, entries)
  grid = image_size // patch_size
  kernel = tree["patch_embed"]["proj"]["kernel"]
  kernel = resample.resample_patch_kernel(kernel, (patch_size, patch_size))
  tree["patch_embed"]["proj"]["kernel"] = np.asarray(kernel, np.float32)
  prefix = 0 if n_reg else 1
  pos = resample.resample_pos_embed(tree["pos_embed"], (grid, grid), num_prefix_tokens=prefix)
  tree["pos_embed"] = np.asarray(pos, np.float32)
  expected = abstract_params(variant, grid, patch_size, n_reg)
  vit_weights.check_shapes(tree, expected, WHAT, CONFIG_KEY, sd)
  return tree


def load_teacher_params(
  path: str | os.PathLike | None,
  *,
  variant: str = "L",
  image_size: int = 256,
  patch_size: int = 16,
  random_init: bool = False,
  key: jax.Array | None = None,
) -> dict[str, Any]:
  """Frozen DINOv2 teacher params (numpy f32) from timm `vit_*_patch14_dinov2.lvd142m`
  `model.safetensors` (or the facebookresearch .pth with torch), for `image_size` inputs.

  A missing file raises WeightFileError naming `loss.align.teacher_path`, unless `random_init`
  (`loss.random_init`), which returns random weights of the variant's shapes with a warning.
  """
  if random_init and not (path and io.expand_path(path).is_file()):
    logging.warning(
      "DINOv2 alignment teacher: RANDOM weights (loss.random_init=True, %s=%r not found); "
      "the alignment loss is meaningless for real training",
      CONFIG_KEY,
      path,
    )
    key = jax.random.key(0) if key is None else key
    shapes = abstract_params(variant, image_size // patch_size, patch_size)
    return vit_weights.random_like(shapes, key)
  sd = io.load_state_dict(path, WHAT, CONFIG_KEY)
  return params_from_state_dict(sd, variant=variant, image_size=image_size, patch_size=patch_size)
