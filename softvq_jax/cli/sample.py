r"""Sample class-conditional images from a SiT/DiT generator: PNGs, a PNG grid and an ADM `.npz`.

  python -m softvq_jax.sample --model=runs/sit_xl --tokenizer=exported/softvq_b64 --num=50000 \
      --batch=256 --sampler=sde --steps=250 --cfg_scale=1.75 --cfg_interval=0,0.7 --out=samples/

`--model` (or `--workdir`) is a training workdir (EMA params of the latest checkpoint) or a model
dir from `python -m softvq_jax.convert sit`; `--tokenizer` defaults to the one recorded in the
generator's config. Labels: `--classes` ("" = all of the model's classes, "0-9", "1,5,7") cycled
to `--num` samples (50 per class for 50k ImageNet samples). Writes `OUT/grid.png` (the first
`--grid` samples), `OUT/images/{i:06d}.png` (unless --no_png) and `OUT/samples_{N}x{S}x{S}x3.npz`
(`arr_0` uint8 NHWC, `arr_1` labels) for the ADM evaluator. The old hyphenated spellings
(`--cfg-scale`, `--cfg-interval`, `--noise-schedule`, `--no-png`) still work (deprecated).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import flags
from etils import epath

from softvq_jax.cli import inputs
from softvq_jax.utils import cli
from softvq_jax.utils.errors import UserError

FLAGS = flags.FlagValues()  # this command's own flags (see utils/cli.py)
_MODEL = flags.DEFINE_string(
  "model", None, "Generator model dir or training workdir.", flag_values=FLAGS
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Same as --model.", flag_values=FLAGS)
_TOKENIZER = flags.DEFINE_string(
  "tokenizer", None, "Tokenizer dir/workdir (default: the recorded one).", flag_values=FLAGS
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", flag_values=FLAGS)
_RAW = flags.DEFINE_bool("raw", False, "Raw instead of EMA params (workdirs).", flag_values=FLAGS)
_NUM = flags.DEFINE_integer("num", 50_000, "Number of samples.", lower_bound=1, flag_values=FLAGS)
_CLASSES = flags.DEFINE_string(
  "classes", "", '"" = all of the model\'s classes, "0-9", "1,5,7".', flag_values=FLAGS
)
_BATCH = flags.DEFINE_integer(
  "batch", 64, "Samples per batch (split over devices).", lower_bound=1, flag_values=FLAGS
)
_SAMPLER = flags.DEFINE_enum(
  "sampler",
  None,
  ["ode", "sde", "diffusion"],
  "Default: sde (SiT), diffusion (DiT).",
  flag_values=FLAGS,
)
_STEPS = flags.DEFINE_integer("steps", 250, "Sampler steps.", lower_bound=1, flag_values=FLAGS)
_HEUN = flags.DEFINE_bool("heun", False, "Heun instead of Euler (ode).", flag_values=FLAGS)
_CFG = flags.DEFINE_float("cfg_scale", 1.75, "Guidance scale (1: none).", flag_values=FLAGS)
_INTERVAL = flags.DEFINE_string(
  "cfg_interval", "0,0.7", "SiT: guidance only for lo <= t <= hi (DiT: always).", flag_values=FLAGS
)
_PATH = flags.DEFINE_enum(
  "path",
  "linear",
  ["linear", "cosine"],
  "The SDE's score path (the trained one).",
  flag_values=FLAGS,
)
_SCHEDULE = flags.DEFINE_enum(
  "noise_schedule", "cosine", ["linear", "cosine"], "DiT noise schedule.", flag_values=FLAGS
)
_SEED = flags.DEFINE_integer("seed", 0, "Sample i uses fold_in(key(seed), i).", flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "Output folder.", flag_values=FLAGS)
_NO_PNG = flags.DEFINE_bool(
  "no_png", False, "No per-sample PNGs (grid and .npz only).", flag_values=FLAGS
)
_GRID = flags.DEFINE_integer(
  "grid", 64, "Samples in OUT/grid.png (0: no grid).", lower_bound=0, flag_values=FLAGS
)
flags.mark_flags_as_required(["out"], flag_values=FLAGS)


def parse_interval(text: str, flag: str = "--cfg_interval") -> tuple[float, float]:
  """ "lo,hi" -> (lo, hi); a UserError naming the flag otherwise."""
  try:
    lo, hi = (float(v) for v in text.split(","))
  except ValueError:
    raise UserError(f"{flag}={text!r}: expected two numbers low,high (e.g. 0,0.7)") from None
  return lo, hi


def sampler_settings(
  is_dit, *, sampler, steps, heun, cfg_scale, cfg_interval, path, noise_schedule
):
  """SamplerSettings from flag values (shared by `sample` and `evaluate --mode=generation`); a bad
  value is a UserError naming its flag. `sampler=""`: sde for SiT, diffusion for DiT."""
  from softvq_jax.sampling import generate as g

  try:
    return g.SamplerSettings(
      sampler=sampler or ("diffusion" if is_dit else "sde"),
      steps=steps,
      heun=heun,
      cfg_scale=cfg_scale,
      cfg_interval=parse_interval(cfg_interval),
      path=path,
      noise_schedule=noise_schedule,
    )
  except ValueError as e:
    raise UserError(f"bad sampler flags: {e}") from None


SAMPLER_FLAGS = ("sampler", "steps", "heun", "cfg_scale", "cfg_interval", "path", "noise_schedule")


def settings_from_flags(is_dit: bool | None = None, fv: flags.FlagValues = FLAGS):
  """The SamplerSettings of the sampler flags of `fv` (this command's, or `evaluate`'s, which
  defines the same names)."""
  return sampler_settings(is_dit, **{name: fv[name].value for name in SAMPLER_FLAGS})


def check_model_flags() -> str:
  """Exactly one of --model/--workdir, naming an existing generator; the tokenizer if given."""
  if bool(_MODEL.value) == bool(_WORKDIR.value):
    raise UserError("pass exactly one of --model (model dir or workdir) and --workdir")
  flag, path = ("--model", _MODEL.value) if _MODEL.value else ("--workdir", _WORKDIR.value)
  cli.require_inputs([(flag, path, "dir"), ("--tokenizer", _TOKENIZER.value, "dir")])
  hint = (
    "sample needs a SiT/DiT generator (reconstruct images with python -m softvq_jax.reconstruct)"
  )
  inputs.require(path, "generator", flag, hint)
  if _TOKENIZER.value:
    inputs.require(_TOKENIZER.value, "tokenizer", "--tokenizer")
  return path


def labels_for(spec: str, num: int, num_classes: int) -> np.ndarray:
  """The chosen classes cycled to `num` labels; a bad --classes is a UserError."""
  from softvq_jax.sampling import generate as g

  try:
    classes = g.parse_classes(spec, num_classes)
  except ValueError as e:
    why = str(e) if "must lie" in str(e) else 'expected "" (all), a range "0-9" or a list "1,5,7"'
    raise UserError(f"--classes={spec!r}: {why}") from None
  return classes[np.arange(num) % len(classes)]


def _sample() -> epath.Path:
  """The command on the parsed flags; returns the .npz path."""
  path = check_model_flags()
  settings_from_flags()  # bad values before the models load
  from softvq_jax.evaluation.adm_npz import SampleNpzWriter
  from softvq_jax.sampling import generate as g
  from softvq_jax.utils.images import make_grid, save_png
  from softvq_jax.weights.io import expand_path

  gen = g.load_generator(path, _TOKENIZER.value, ema=not _RAW.value, step=_STEP.value)
  if gen.tokenizer is None:
    raise UserError(f"no tokenizer recorded for the generator {path}: pass --tokenizer=DIR")
  settings = settings_from_flags(gen.is_dit)
  labels = labels_for(_CLASSES.value, _NUM.value, gen.model.num_classes)
  out = expand_path(_OUT.value)  # local or gs://
  out.mkdir(parents=True, exist_ok=True)
  s, num = gen.image_size, _NUM.value
  npz = out / f"samples_{num}x{s}x{s}x3.npz"
  record = {name: FLAGS[name].value for name in FLAGS if "." not in name}
  record.update(sampler=settings.sampler, vq_mean=gen.vq_mean, vq_std=gen.vq_std)
  (out / "sampling.json").write_text(json.dumps(record, indent=2, default=str))
  t0, done, grid = time.time(), 0, []
  with SampleNpzWriter(npz, num, (s, s, 3), with_labels=True) as writer:
    for images, lab in g.generate(gen, labels, settings, batch_size=_BATCH.value, seed=_SEED.value):
      writer.write(images, lab)
      grid.extend(images[: max(0, _GRID.value - len(grid))])
      if not _NO_PNG.value:
        for j, im in enumerate(images):
          save_png(out / "images" / f"{done + j:06d}.png", im)
      done += len(images)
      print(f"{done}/{num} images ({done / (time.time() - t0):.2f} images/s)", flush=True)
  if grid:
    save_png(out / "grid.png", make_grid(np.stack(grid), ncols=math.ceil(math.sqrt(len(grid)))))
    print(f"wrote {out / 'grid.png'} ({len(grid)} samples)")
  print(f"wrote {npz}")
  return npz


def main(argv: Sequence[str] | None = None) -> epath.Path:
  """Runs the command on `argv` (flags only, no program name; default sys.argv[1:]); returns the
  .npz path. Errors raise (UserError for the user's); `python -m` reports them (exit 2)."""
  rest = cli.parse(FLAGS, ["sample", *(sys.argv[1:] if argv is None else argv)])
  if rest[1:]:
    raise UserError(f"unexpected arguments {rest[1:]}: flags are spelled --name=value")
  return _sample()


def _main(argv):
  del argv  # cli.run refuses positional arguments
  _sample()


def run(argv=None) -> None:
  """`python -m softvq_jax.sample` on `argv` (default sys.argv[1:], no program name):
  exits 0, or 2 with one line on a user error (utils/cli.py). Tests call it in-process."""
  cli.run(_main, FLAGS, None if argv is None else ["sample", *argv])


if __name__ == "__main__":
  run()
