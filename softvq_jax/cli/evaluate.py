r"""Evaluation command: a tokenizer's reconstructions or a generator's samples, ADM's protocol.

Tokenizer (rFID, sFID, IS, PSNR, SSIM, LPIPS, codebook usage; summary.json, reconstructions.png):
  python -m softvq_jax.evaluate --model=exported/softvq_bl64 --config=configs/tokenizer_b.py \
    --config.data.name=imagenet --split=validation --inception=pt_inception.safetensors --out=ev
  python -m softvq_jax.evaluate --workdir=runs/quick --data=photos --crops=4 \
    --inception_random_init --out=/tmp/ev   # smoke test: metrics not comparable
Generator (gFID, sFID, IS, precision, recall vs an ADM reference batch; the ADM sample .npz):
  python -m softvq_jax.evaluate --mode=generation --model=runs/sit_xl --tokenizer=exported/b64 \
    --num_samples=50000 --sampler=sde --steps=250 --cfg_scale=1.75 --cfg_interval=0,0.7 \
    --ref_batch=VIRTUAL_imagenet256_labeled.npz --inception=pt_inception.safetensors --out=gen

The logic lives in `softvq_jax.evaluation.reconstruction` / `.generation` (importable).
"""

from __future__ import annotations

import json
import os

from absl import flags
from ml_collections import config_flags

from softvq_jax.cli import inputs
from softvq_jax.utils import cli
from softvq_jax.utils.errors import UserError

FLAGS = flags.FlagValues()  # this command's own flags (see utils/cli.py)
_MODE = flags.DEFINE_enum(
  "mode", "tokenizer", ["tokenizer", "generation"], "What to evaluate.", flag_values=FLAGS
)
_MODEL = flags.DEFINE_string(
  "model", None, "Model dir (config.json + params) to evaluate.", flag_values=FLAGS
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Training workdir (EMA params of a checkpoint).", flag_values=FLAGS
)
_STEP = flags.DEFINE_integer(
  "step", None, "Checkpoint step of --workdir (default: latest).", flag_values=FLAGS
)
_RAW = flags.DEFINE_bool(
  "raw", False, "Evaluate the raw instead of the EMA params.", flag_values=FLAGS
)
_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file whose `data` section names the dataset (default: the model's).",
  flag_values=FLAGS,
)
_DATA = flags.DEFINE_enum(
  "data", None, ["photos", "folder", "imagenet"], "Shortcut for data.name.", flag_values=FLAGS
)
_SPLIT = flags.DEFINE_string(
  "split", "validation", "Split to evaluate (data.eval_split).", flag_values=FLAGS
)
_NUM = flags.DEFINE_integer(
  "num_images", 0, "First N images of the split (0: all).", flag_values=FLAGS
)
_CROPS = flags.DEFINE_integer(
  "crops", 1, "Views per image: 1 = ADM center crop (the protocol).", flag_values=FLAGS
)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per batch and process.", flag_values=FLAGS)
_INCEPTION = flags.DEFINE_string(
  "inception",
  None,
  "pt_inception-2015-12-05 weights (.safetensors/.npz, or .pth with torch).",
  flag_values=FLAGS,
)
_RANDOM_INCEPTION = flags.DEFINE_bool(
  "inception_random_init",
  False,
  "Random Inception weights (tests only; metrics not comparable).",
  flag_values=FLAGS,
)
_REF = flags.DEFINE_string(
  "ref_stats", None, "ADM reference batch with mu/sigma (optional).", flag_values=FLAGS
)
_LPIPS_VGG = flags.DEFINE_string(
  "lpips_vgg", None, "VGG16 trunk for LPIPS (see --lpips_lin).", flag_values=FLAGS
)
_LPIPS_LIN = flags.DEFINE_string(
  "lpips_lin",
  None,
  "LPIPS heads (vgg.pth) or a full LPIPS state dict: enables LPIPS.",
  flag_values=FLAGS,
)
_PR = flags.DEFINE_bool(
  "precision_recall",
  None,
  "Precision/recall (keeps pool rows); default: generation only.",
  flag_values=FLAGS,
)
_GRID = flags.DEFINE_integer("grid_images", 16, "Images in reconstructions.png.", flag_values=FLAGS)
_NPZ = flags.DEFINE_bool(
  "save_npz", False, "Write the uint8 reconstructions as an ADM .npz.", flag_values=FLAGS
)
_SAVE_EVERY = flags.DEFINE_integer(
  "save_every", 50, "Save the resumable state every N batches.", flag_values=FLAGS
)
_RESUME = flags.DEFINE_bool(
  "resume", True, "Resume from out/eval_state.npz if present.", flag_values=FLAGS
)
_OUT = flags.DEFINE_string("out", None, "Output directory.", flag_values=FLAGS)
# Generation mode
_TOKENIZER = flags.DEFINE_string(
  "tokenizer", None, "Tokenizer dir (default: the generator's).", flag_values=FLAGS
)
_NUM_SAMPLES = flags.DEFINE_integer(
  "num_samples", 50_000, "Samples to generate.", flag_values=FLAGS
)
_CLASSES = flags.DEFINE_string(
  "classes", "", 'Classes cycled over the samples: "" all, "0-9".', flag_values=FLAGS
)
_SAMPLER = flags.DEFINE_enum(
  "sampler",
  None,
  ["sde", "ode", "diffusion"],
  "Default: sde (SiT), diffusion (DiT).",
  flag_values=FLAGS,
)
_STEPS = flags.DEFINE_integer("steps", 250, "Sampler steps.", flag_values=FLAGS)
_HEUN = flags.DEFINE_bool("heun", False, "Heun instead of Euler (ode).", flag_values=FLAGS)
_CFG = flags.DEFINE_float(
  "cfg_scale", 1.75, "Classifier-free guidance scale (1: none).", flag_values=FLAGS
)
_INTERVAL = flags.DEFINE_string(
  "cfg_interval", "0,0.7", "Guidance only for low <= t <= high.", flag_values=FLAGS
)
_PATH = flags.DEFINE_enum(
  "path", "linear", ["linear", "cosine"], "Interpolant (SDE score).", flag_values=FLAGS
)
_SCHEDULE = flags.DEFINE_enum(
  "noise_schedule", "cosine", ["linear", "cosine"], "DiT schedule.", flag_values=FLAGS
)
_SEED = flags.DEFINE_integer("seed", 0, "Sample i uses fold_in(key(seed), i).", flag_values=FLAGS)
_REF_BATCH = flags.DEFINE_string(
  "ref_batch", None, "ADM reference batch (VIRTUAL_*.npz).", flag_values=FLAGS
)
_PART = flags.DEFINE_integer("part_size", 1000, "Samples per resumable part.", flag_values=FLAGS)
_KEEP_PARTS = flags.DEFINE_bool(
  "keep_parts", False, "Keep the part files after assembling.", flag_values=FLAGS
)
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "auto",
  ["auto", "true", "false"],
  "jax.distributed.initialize() (as main).",
  flag_values=FLAGS,
)
flags.mark_flags_as_required(["out"], flag_values=FLAGS)


def _distributed_init():
  import jax

  if _DISTRIBUTED.value == "true" or (
    _DISTRIBUTED.value == "auto"
    and (
      os.environ.get("SLURM_NTASKS", "1") not in ("", "1")
      or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
    )
  ):
    jax.distributed.initialize()


def _data_config():
  cfg = _CONFIG.value.data if _CONFIG.value is not None else None
  if _DATA.value:
    import ml_collections

    cfg = ml_collections.ConfigDict(cfg.to_dict() if cfg is not None else {})
    cfg.name = _DATA.value
  return cfg


def _settings(is_dit: bool):
  from softvq_jax.cli.sample import settings_from_flags

  return settings_from_flags(is_dit, FLAGS)


def check_inputs() -> str:
  """Every input the flags name, before anything heavy is built (the Inception alone takes a
  minute on a CPU): one error listing every missing file. Returns the model path."""
  if bool(_MODEL.value) == bool(_WORKDIR.value):
    raise UserError("pass exactly one of --model (exported dir) and --workdir (training run)")
  if not _INCEPTION.value and not _RANDOM_INCEPTION.value:
    raise UserError(
      "no Inception weights: pass --inception=/path/to/pt_inception-2015-12-05.safetensors "
      "(or --inception_random_init for a smoke test whose metrics are not comparable)"
    )
  if _LPIPS_VGG.value and not _LPIPS_LIN.value:
    raise UserError("--lpips_vgg needs --lpips_lin (the LPIPS heads) as well")
  flag, path = ("--model", _MODEL.value) if _MODEL.value else ("--workdir", _WORKDIR.value)
  generation = _MODE.value == "generation"
  cli.require_inputs(
    [
      (flag, path, "dir"),
      ("--inception", _INCEPTION.value, "file"),
      ("--ref_stats", _REF.value if not generation else None, "file"),
      ("--ref_batch", _REF_BATCH.value if generation else None, "file"),
      ("--lpips_lin", _LPIPS_LIN.value if not generation else None, "file"),
      ("--lpips_vgg", _LPIPS_VGG.value if not generation else None, "file"),
      ("--tokenizer", _TOKENIZER.value if generation else None, "dir"),
    ]
  )
  if generation:
    info = inputs.require(path, "generator", flag, "--mode=tokenizer evaluates tokenizers")
    if _TOKENIZER.value:
      inputs.require(_TOKENIZER.value, "tokenizer", "--tokenizer")
    _settings(info.detail == "dit")
  else:
    inputs.require(path, "tokenizer", flag, "--mode=generation evaluates generators")
  return path


def _generation():
  from softvq_jax.evaluation import generation
  from softvq_jax.sampling.generate import load_generator

  gen = load_generator(_MODEL.value or _WORKDIR.value, _TOKENIZER.value, ema=not _RAW.value)
  if gen.tokenizer is None:
    raise UserError("no tokenizer recorded for this generator: pass --tokenizer=DIR")
  settings = _settings(gen.is_dit)
  try:
    generation.sample_labels(1, _CLASSES.value, gen.model.num_classes)
  except ValueError as e:
    raise UserError(f"--classes={_CLASSES.value!r}: {e}") from None
  return generation.evaluate_generation(
    gen,
    _OUT.value,
    settings=settings,
    num_samples=_NUM_SAMPLES.value,
    classes=_CLASSES.value,
    batch_size=_BATCH.value,
    part_size=_PART.value,
    seed=_SEED.value,
    ref_batch=_REF_BATCH.value,
    inception_path=_INCEPTION.value,
    inception_random_init=_RANDOM_INCEPTION.value,
    precision_recall=_PR.value if _PR.value is not None else True,
    keep_parts=_KEEP_PARTS.value,
  )


def main(argv):
  del argv  # cli.run refuses positional arguments
  check_inputs()
  cli.hide_accelerators_from_tf()
  _distributed_init()
  if _MODE.value == "generation":
    summary = _generation()
  else:
    summary = _tokenizer()
  print(json.dumps({k: v for k, v in summary.items() if k != "protocol"}, indent=2, default=str))


def _tokenizer():
  from softvq_jax.evaluation import tokenizer_eval

  return tokenizer_eval.evaluate_tokenizer(
    _MODEL.value or _WORKDIR.value,
    _OUT.value,
    data_cfg=_data_config(),
    split=_SPLIT.value,
    num_images=_NUM.value,
    crops=_CROPS.value,
    batch_size=_BATCH.value,
    inception_path=_INCEPTION.value,
    inception_random_init=_RANDOM_INCEPTION.value,
    ref_stats=_REF.value,
    lpips_vgg=_LPIPS_VGG.value,
    lpips_lin=_LPIPS_LIN.value,
    precision_recall=bool(_PR.value),
    grid_images=_GRID.value,
    save_npz=_NPZ.value,
    save_every=_SAVE_EVERY.value,
    resume=_RESUME.value,
    ema=not _RAW.value,
    step=_STEP.value,
  )


def run(argv=None) -> None:
  """`python -m softvq_jax.evaluate` on `argv` (default sys.argv[1:], no program name):
  exits 0, or 2 with one line on a user error (utils/cli.py). Tests call it in-process."""
  cli.run(main, FLAGS, None if argv is None else ["evaluate", *argv])


if __name__ == "__main__":
  run()
