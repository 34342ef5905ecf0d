"""Initialise the tokenizer encoder from a DINOv2 checkpoint (timm / facebookresearch key layout).

This is how the released models were trained (SPEC §1.1): the encoder ViT starts from DINOv2 with
its 14x14 patch kernel resampled to the tokenizer's patch (FlexiViT pseudo-inverse resize) and
its 37x37 position grid resampled bicubically to (S/p)^2 (the cls slot kept). Latent tokens,
quant_conv, the quantizer and the decoder keep their random init. `mask_token` / `reg_token`
entries are ignored (DINOv2's masked-modelling token; registers are not used by SoftVQ).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from softvq_jax.weights import checks, io
from softvq_jax.weights.tokenizer import vit_key_map

_IGNORED = ("mask_token", "reg_token")


def _resample():
  try:
    from softvq_jax.weights import resample
  except ImportError as e:  # pragma: no cover - depends on the sibling module being present
    raise ImportError(
      "resampling DINOv2 patch kernels / position grids needs softvq_jax.weights.resample "
      "(resample_patch_kernel, resample_pos_embed)"
    ) from e
  return resample


def init_encoder_from_dinov2(
  params: Mapping[str, Any],
  dinov2_state_dict: Mapping[str, np.ndarray],
  *,
  patch_size: int,
  image_size: int,
) -> dict[str, Any]:
  """Returns a copy of `params` whose encoder ViT (patch embed, cls, pos, blocks, norm) is DINOv2.

  `dinov2_state_dict` holds numpy arrays in PyTorch layout with keys `cls_token`, `pos_embed`,
  `patch_embed.proj.{weight,bias}`, `blocks.{i}.*`, `norm.*`; its depth and width must match
  the encoder's. Every tensor used must be float and finite (WeightValueError); errors name the
  file when the state dict was read with `io.load_state_dict`.
  """
  enc = dict(params["encoder"])
  depth = sum(1 for k in enc if k.startswith("blocks_"))
  width = int(np.shape(enc["cls_token"])[-1])
  sd = io.strip_wrapper_prefix(dinov2_state_dict)
  src = checks.where(sd)
  sd = checks.keep_source(dict(sd), sd)
  ignored = [k for k in sd if k.split(".")[0] in _IGNORED]
  if ignored:
    logging.info("DINOv2 init: ignoring %s", ", ".join(sorted(ignored)))
  entries = vit_key_map("", (), depth)
  want = {key for _, key, _ in entries} | {
    "cls_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
  }
  missing = sorted(want - set(sd))
  unknown = sorted(set(sd) - want - set(ignored))
  if missing or unknown:
    raise checks.WeightKeyError(
      f"{src}DINOv2 state dict does not match an encoder of depth {depth}: missing {missing}, "
      f"unexpected {unknown}"
    )
  for key in want:
    sd[key] = checks.float_tensor(sd[key], key, sd)
  if np.shape(sd["cls_token"])[-1] != width:
    raise checks.WeightValueError(
      f"{src}DINOv2 width {np.shape(sd['cls_token'])[-1]} != encoder width {width}"
    )

  flat: dict[tuple[str, ...], np.ndarray] = {}
  for path, key, kind in entries:
    flat[path] = io.linear_kernel(sd[key]) if kind == "linear" else np.asarray(sd[key])

  # Patch embedding: OIHW -> HWIO, then resize the kernel to the tokenizer's patch.
  kernel = io.conv_kernel(sd["patch_embed.proj.weight"])
  if kernel.shape[:2] != (patch_size, patch_size):
    kernel = np.asarray(_resample().resample_patch_kernel(kernel, (patch_size, patch_size)))
  flat[("patch_embed", "proj", "kernel")] = kernel
  flat[("patch_embed", "proj", "bias")] = np.asarray(sd["patch_embed.proj.bias"])
  flat[("cls_token",)] = np.asarray(sd["cls_token"])

  # Position grid: (1, [1 +] G*G, E) -> (1, 1 + g*g, E); without a cls slot keep ours.
  pos = np.asarray(sd["pos_embed"])
  grid = image_size // patch_size
  n = pos.shape[1]
  prefix = 0 if math.isqrt(n) ** 2 == n else 1
  if n - prefix != grid * grid:
    pos = np.asarray(_resample().resample_pos_embed(pos, (grid, grid), num_prefix_tokens=prefix))
  if prefix == 0:
    pos = np.concatenate([np.asarray(enc["pos_embed"])[:, :1], pos], axis=1)
  flat[("pos_embed",)] = pos

  for path, value in flat.items():
    node, old = enc, None
    for k in path[:-1]:
      node[k] = dict(node[k])
      node = node[k]
    old = node[path[-1]]
    if tuple(value.shape) != tuple(np.shape(old)):
      raise checks.WeightValueError(
        f"{src}DINOv2 {'/'.join(path)} has shape {value.shape}, "
        f"encoder needs {tuple(np.shape(old))}"
      )
    node[path[-1]] = jnp.asarray(value, dtype=old.dtype)
  return {**params, "encoder": enc}
