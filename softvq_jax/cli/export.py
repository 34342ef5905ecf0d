"""Export a trained tokenizer: EMA params + config with vq_mean/vq_std, ready for the generators.

  python -m softvq_jax.export --workdir=runs/quick --out=exported/quick [--stats_images=10000]
  python -m softvq_jax.export --workdir=runs/quick --out=x.safetensors --format=reference

The default format is an exported model directory (`checkpointing.save_model`); `reference` writes
the PyTorch-layout state dict (safetensors) and a reference config.json beside it.
"""

from __future__ import annotations

import json
import pathlib

import ml_collections
from absl import flags, logging

from softvq_jax import checkpointing, data
from softvq_jax.utils import cli
from softvq_jax.weights import pretrained

FLAGS = flags.FlagValues()  # this command's own flags (see utils/cli.py)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Training workdir with checkpoints/.", flag_values=FLAGS
)
_OUT = flags.DEFINE_string(
  "out", None, "Output model directory (or .safetensors for reference).", flag_values=FLAGS
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", flag_values=FLAGS)
_RAW = flags.DEFINE_bool(
  "raw", False, "Export the raw params instead of the EMA params.", flag_values=FLAGS
)
_STATS = flags.DEFINE_integer(
  "stats_images", 10_000, "Images for vq_mean/vq_std (0: keep).", flag_values=FLAGS
)
_FORMAT = flags.DEFINE_enum(
  "format", "model", ["model", "reference"], "Output format.", flag_values=FLAGS
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output.", flag_values=FLAGS)
flags.mark_flags_as_required(["workdir", "out"], flag_values=FLAGS)


def export(workdir, out, *, step=None, ema=True, stats_images=10_000, fmt="model", overwrite=False):
  """Loads a training checkpoint, measures latent statistics, writes the chosen format."""
  tok = pretrained.load_tokenizer(workdir, ema=ema, step=step)
  config = dict(tok.config)
  if stats_images:
    c = ml_collections.ConfigDict(config)
    batch = c.eval.batch_size
    train = data.build_train_data(
      c.data,
      image_size=c.model.image_size,
      global_batch=batch,
      seed=c.seed,
      process_index=0,
      process_count=1,
    )
    it = train.iterator(0)
    batches = (next(it) for _ in range(-(-stats_images // batch)))
    mean, std = pretrained.latent_statistics(tok, batches, max_images=stats_images)
    if hasattr(it, "close"):
      it.close()
    config["model"] = dict(config["model"], vq_mean=mean, vq_std=std)
    logging.info(
      "latent statistics over %d images: vq_mean=%.6g vq_std=%.6g", stats_images, mean, std
    )
  if fmt == "model":
    return checkpointing.save_model(out, tok.params, config, overwrite=overwrite)
  from softvq_jax.weights.io import save_safetensors
  from softvq_jax.weights.reference_config import model_to_reference_config
  from softvq_jax.weights.tokenizer import tokenizer_to_reference

  out = pathlib.Path(out)
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  ref_config = model_to_reference_config(config)
  save_safetensors(tokenizer_to_reference(tok.params, ref_config), out)
  (out.parent / "config.json").write_text(json.dumps(ref_config, indent=2))
  return out


def main(argv):
  del argv
  out = export(
    _WORKDIR.value,
    _OUT.value,
    step=_STEP.value,
    ema=not _RAW.value,
    stats_images=_STATS.value,
    fmt=_FORMAT.value,
    overwrite=_OVERWRITE.value,
  )
  print(f"exported to {out}")


if __name__ == "__main__":
  cli.run(main, FLAGS)
