"""Export a trained tokenizer: EMA params + config with vq_mean/vq_std, ready for the generators.

  python -m softvq_jax.export --workdir=runs/quick --out=runs/quick/exported [--stats_images=10000]
  python -m softvq_jax.export --workdir=runs/quick --out=x.safetensors --format=reference

The default format is an exported model directory (`checkpointing.save_model`); `reference` writes
the PyTorch-layout state dict (safetensors) and a reference config.json beside it. The latent
statistics are measured over `--stats_images` training images (at most the whole training set,
one pass), with a progress line. Tokenizer workdirs only: a SiT/DiT workdir is used as it is by
`sample` / `evaluate` (or converted with `python -m softvq_jax.convert`).
"""

from __future__ import annotations

import json

import ml_collections
from absl import flags

from softvq_jax.cli import inputs
from softvq_jax.utils import cli
from softvq_jax.utils.errors import UserError
from softvq_jax.utils.paths import user_path

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
  "stats_images",
  10_000,
  "Images for vq_mean/vq_std, at most the training set's size (0: keep the config's).",
  lower_bound=0,
  flag_values=FLAGS,
)
_FORMAT = flags.DEFINE_enum(
  "format", "model", ["model", "reference"], "Output format.", flag_values=FLAGS
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output.", flag_values=FLAGS)
flags.mark_flags_as_required(["workdir", "out"], flag_values=FLAGS)

GENERATOR_HINT = (
  "export writes tokenizers; a generator workdir is used as it is by `python -m "
  "softvq_jax.sample --model=DIR` and `python -m softvq_jax.evaluate --mode=generation`"
)


def check_inputs(workdir, out, *, overwrite: bool = False) -> None:
  """Refuses, before anything is loaded: a missing workdir, a generator workdir, an existing out."""
  inputs.require(workdir, "tokenizer", "--workdir", GENERATOR_HINT)
  if user_path(out).exists() and not overwrite:
    raise UserError(f"--out={out} exists; pass --overwrite to replace it")


def latent_statistics(
  tok, stats_images: int, log_every_s: float = 10.0
) -> tuple[float, float, int]:
  """(vq_mean, vq_std, images used) over min(stats_images, training set) training images."""
  from softvq_jax import data
  from softvq_jax.evaluation.common import Progress
  from softvq_jax.weights import pretrained

  c = ml_collections.ConfigDict(dict(tok.config))
  c.data.uint8_transfer = False  # the tokenizer encodes [-1, 1] floats
  batch = c.eval.batch_size
  train = data.build_train_data(
    c.data,
    image_size=c.model.image_size,
    global_batch=batch,
    seed=c.seed,
    process_index=0,
    process_count=1,
  )
  n = min(stats_images, train.num_examples)
  note = f" (the whole training set; --stats_images={stats_images})" if n < stats_images else ""
  print(f"latent statistics over {n} training images{note}", flush=True)
  progress = Progress(n, "images", every_s=log_every_s)
  it = train.iterator(0)

  def batches():
    for _ in range(-(-n // batch)):
      b = next(it)
      yield b
      progress.update(min(n, progress.done + len(b["image"])))

  try:
    mean, std = pretrained.latent_statistics(tok, batches(), max_images=n)
  finally:
    if hasattr(it, "close"):
      it.close()
  progress.update(n, force=True)
  return mean, std, n


def export(workdir, out, *, step=None, ema=True, stats_images=10_000, fmt="model", overwrite=False):
  """Loads a training checkpoint, measures latent statistics, writes the chosen format."""
  from softvq_jax import checkpointing
  from softvq_jax.weights import pretrained

  check_inputs(workdir, out, overwrite=overwrite)
  tok = pretrained.load_tokenizer(workdir, ema=ema, step=step)
  config = dict(tok.config)
  if stats_images:
    mean, std, n = latent_statistics(tok, stats_images)
    config["model"] = dict(config["model"], vq_mean=mean, vq_std=std)
    print(f"latent statistics over {n} images: vq_mean={mean:.6g} vq_std={std:.6g}", flush=True)
  if fmt == "model":
    return checkpointing.save_model(out, tok.params, config, overwrite=overwrite)
  from softvq_jax.utils.files import atomic_open
  from softvq_jax.weights.io import save_safetensors
  from softvq_jax.weights.reference_config import model_to_reference_config
  from softvq_jax.weights.tokenizer import tokenizer_to_reference

  out = user_path(out)  # local or gs://
  ref_config = model_to_reference_config(config)
  save_safetensors(tokenizer_to_reference(tok.params, ref_config), out)
  with atomic_open(out.parent / "config.json", "w") as f:
    f.write(json.dumps(ref_config, indent=2))
  return out


def main(argv):
  del argv  # cli.run refuses positional arguments
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


def run(argv=None) -> None:
  """`python -m softvq_jax.export` on `argv` (default sys.argv[1:], no program name):
  exits 0, or 2 with one line on a user error (utils/cli.py). Tests call it in-process."""
  cli.run(main, FLAGS, None if argv is None else ["export", *argv])


if __name__ == "__main__":
  run()
