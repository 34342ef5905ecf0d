"""Options the chosen mode would silently ignore: refused, naming the option and what reads it.

`data.path` with `data.name='photos'` would train on the bundled photos, not on that folder; a
discriminator checkpoint with the GAN off would never be loaded. Each entry: (key, who reads it,
predicate on the config); a non-empty key whose predicate is false is an error (raised by
config.validate as a ConfigError).
"""

from __future__ import annotations

from typing import Any

from softvq_jax.utils.config_access import cfg_get


def _at(config: Any, dotted: str, default: Any = None) -> Any:
  for part in dotted.split("."):
    config = cfg_get(config, part, None) if config is not None else None
  return default if config is None else config


def _image_dataset(c) -> str:
  name = _at(c, "data.name")
  return _at(c, "data.image_source", "photos") if name == "latents_online" else name


def _reads_path(c) -> bool:
  return _at(c, "data.name") in ("folder", "latents") or _image_dataset(c) == "folder"


def _positive(key: str):
  return lambda c: float(_at(c, key, 0.0) or 0.0) > 0


IGNORED_UNLESS = (
  ("data.path", "data.name='folder' (or 'latents')", _reads_path),
  ("data.eval_path", "data.name='folder' (or 'latents')", _reads_path),
  ("data.data_dir", "data.name='imagenet'", lambda c: _image_dataset(c) == "imagenet"),
  ("data.manual_dir", "data.name='imagenet'", lambda c: _image_dataset(c) == "imagenet"),
  (
    "data.tokenizer",
    "data.name='latents_online'",
    lambda c: _at(c, "data.name") == "latents_online",
  ),
  (
    "loss.disc.dino_path",
    "loss.disc.name='dino' and loss.disc.weight > 0",
    lambda c: _positive("loss.disc.weight")(c) and _at(c, "loss.disc.name") == "dino",
  ),
  ("loss.disc.init_from", "loss.disc.weight > 0", _positive("loss.disc.weight")),
  ("loss.align.teacher_path", "loss.align.weight > 0", _positive("loss.align.weight")),
  ("loss.lpips_vgg_path", "loss.perceptual_weight > 0", _positive("loss.perceptual_weight")),
  ("loss.lpips_lin_path", "loss.perceptual_weight > 0", _positive("loss.perceptual_weight")),
)


def ignored_options(config: Any) -> list[str]:
  """One message per option of IGNORED_UNLESS that is set but would not be read."""
  return [
    f"{key}={_at(config, key)!r} is set but only read with {reader}; set that too, or drop {key}"
    for key, reader, reads in IGNORED_UNLESS
    if _at(config, key, "") not in ("", None) and not reads(config)
  ]
