"""Loading tokenizers for use: exported models, training workdirs, and latent statistics.

A tokenizer "model directory" is what `checkpointing.save_model` writes (the converters and
`python -m softvq_jax.export` produce one): params + config.json with the `model` and `quantizer`
sections and the latent normalisation scalars `model.vq_mean`, `model.vq_std` used by the
generators (`(z_q - vq_mean) / vq_std`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from softvq_jax import checkpointing
from softvq_jax.models.factory import build_tokenizer
from softvq_jax.weights.io import expand_path


@dataclasses.dataclass
class PretrainedTokenizer:
  """A built tokenizer module with its params, and jitted encode/decode."""

  model: Any
  params: Any
  config: dict

  @property
  def vq_mean(self) -> float:
    return float(self.config["model"].get("vq_mean", 0.0))

  @property
  def vq_std(self) -> float:
    return float(self.config["model"].get("vq_std", 1.0))

  @functools.cached_property
  def _encode(self):
    return jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=self.model.encode))

  @functools.cached_property
  def _decode(self):
    return jax.jit(lambda p, z: self.model.apply({"params": p}, z, method=self.model.decode))

  def encode(self, images: jax.Array) -> tuple[jax.Array, dict]:
    """(B, S, S, 3) in [-1, 1] -> z_q (B, L, D) and the quantizer info."""
    return self._encode(self.params, jnp.asarray(images))

  def decode(self, z_q: jax.Array) -> jax.Array:
    """z_q (B, L, D) -> images (B, S, S, 3), roughly in [-1, 1] (not clipped)."""
    return self._decode(self.params, jnp.asarray(z_q))

  def normalize(self, z_q: jax.Array) -> jax.Array:
    """Latents as the generators see them."""
    return (z_q - self.vq_mean) / self.vq_std

  def denormalize(self, z: jax.Array) -> jax.Array:
    return z * self.vq_std + self.vq_mean


def _sections(config: dict) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  return ml_collections.ConfigDict(config["model"]), ml_collections.ConfigDict(config["quantizer"])


def load_tokenizer(path: str | os.PathLike, *, ema: bool = True, step: int | None = None):
  """A Tokenizer from an exported model dir, or from a training workdir (EMA params by default)."""
  path = expand_path(path)
  if (path / "config.json").is_file() and (path / "params").exists():
    params, config = checkpointing.load_model(path)
  elif (path / "checkpoints").is_dir():
    config = checkpointing.read_checkpoint_config(path, step)
    model = build_tokenizer(*_sections(config))
    s = config["model"]["image_size"]
    abstract = jax.eval_shape(
      lambda k: model.init({"params": k, "sample": k}, jnp.zeros((1, s, s, 3)))["params"],
      jax.random.PRNGKey(0),
    )
    mngr = checkpointing.CheckpointManager(path, async_save=False)
    params = mngr.restore_params(
      checkpointing.abstract_like(abstract, _single(abstract)), ema=ema, step=step
    )
    mngr.close()
  else:
    raise FileNotFoundError(
      f"{path} is neither an exported tokenizer (config.json + params/) nor a training workdir "
      "(checkpoints/)"
    )
  return PretrainedTokenizer(build_tokenizer(*_sections(config)), params, config)


def _single(tree):
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda _: device, tree)


def latent_statistics(
  tokenizer: PretrainedTokenizer, batches, max_images: int = 10_000
) -> tuple[float, float]:
  """Global scalar mean/std of z_q over up to `max_images` images (the generators' vq_mean/std).

  Accumulated in float64 on the host; `batches` yields dicts with "image" (and optional "mask").
  """
  total, total_sq, count, seen = 0.0, 0.0, 0, 0
  for batch in batches:
    mask = np.asarray(batch.get("mask", np.ones(len(batch["image"]), bool)), bool)
    z, _ = tokenizer.encode(batch["image"])
    z = np.asarray(z, np.float64)[mask]
    total += z.sum()
    total_sq += np.square(z).sum()
    count += z.size
    seen += int(mask.sum())
    if seen >= max_images:
      break
  if count == 0:
    raise ValueError("no images to compute latent statistics from")
  mean = total / count
  return float(mean), float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
