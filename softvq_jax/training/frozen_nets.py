"""The frozen networks the tokenizer objective needs, chosen by the config, and their weights.

  "lpips"   LPIPS-VGG16 ({"vgg", "lin"})     when loss.perceptual_weight > 0
  "dino"    DINO ViT-S/16 discriminator trunk when loss.disc.weight > 0 and loss.disc.name == "dino"
  "teacher" DINOv2 alignment teacher          when loss.align.weight > 0

Weights come from user-supplied files (nothing is downloaded). A configured term whose file is
missing stops with an error naming the file and the config key (checked before training by
`softvq_jax.config.validate.check_weight_files`, from `needed` and `WEIGHT_FILES`), unless
`loss.random_init` is set: then that network gets random weights of the exact published shapes
(logged as such), so tests and CPU runs exercise the full graph. Files that do exist are always
loaded.
"""

from __future__ import annotations

from typing import Any

import jax
from absl import logging

from softvq_jax.models.frozen import dino
from softvq_jax.weights import dino as dino_weights
from softvq_jax.weights import vit as vit_weights

# name -> (config key(s) of its weight file(s), what the file is); `config.validate` checks them.
WEIGHT_FILES = {
  "lpips": (("loss.lpips_lin_path", "loss.lpips_vgg_path"), "LPIPS-VGG16 weights"),
  "dino": (("loss.disc.dino_path",), "DINO ViT-S/16 discriminator trunk weights"),
  "teacher": (("loss.align.teacher_path",), "DINOv2 alignment teacher weights"),
}


def needed(config) -> tuple[str, ...]:
  """Names of the frozen networks the configured objective uses."""
  loss = config.loss
  out = []
  if loss.perceptual_weight > 0:
    out.append("lpips")
  if loss.disc.weight > 0 and loss.disc.name == "dino":
    out.append("dino")
  if loss.align.weight > 0:
    out.append("teacher")
  return tuple(out)


def _exists(path: str) -> bool:
  """A weight file is there (local, `~` expanded, or gs://)."""
  from softvq_jax.weights.io import expand_path

  return bool(path) and expand_path(path).is_file()


def load(config) -> dict[str, Any]:
  """{name: frozen params (numpy float32)} for `needed(config)`."""
  loss = config.loss
  rnd = bool(loss.get("random_init", False))
  key = jax.random.key(config.seed + 7919)
  out: dict[str, Any] = {}
  for i, name in enumerate(needed(config)):
    k = jax.random.fold_in(key, i)
    if name == "lpips":
      from softvq_jax.weights.lpips import load_lpips_params

      random = rnd and not _exists(loss.lpips_lin_path)
      out[name] = load_lpips_params(
        loss.lpips_vgg_path, loss.lpips_lin_path, random_init=random, key=k
      )
    elif name == "dino":
      variant = loss.disc.get("dino_variant", "S")
      if variant == "S":
        out[name] = dino_weights.load_dino_params(loss.disc.dino_path, random_init=rnd, key=k)
      else:
        logging.warning("DINO discriminator trunk: %r variant with RANDOM weights", variant)
        out[name] = vit_weights.random_like(dino.abstract_params(*dino.TRUNK_VARIANTS[variant]), k)
    elif name == "teacher":
      from softvq_jax.weights.dinov2 import load_teacher_params

      out[name] = load_teacher_params(
        loss.align.teacher_path,
        variant=loss.align.teacher_variant,
        image_size=config.model.image_size,
        patch_size=loss.align.get("teacher_patch_size", 16),
        random_init=rnd,
        key=k,
      )
  return out
