"""Command-line converters between released reference checkpoints and softvq_jax model dirs.

  python -m softvq_jax.convert tokenizer --weights HF_DIR --out DIR
  python -m softvq_jax.convert tokenizer --config config.json --weights model.safetensors --out DIR
  python -m softvq_jax.convert tokenizer-to-reference --checkpoint DIR --out model.safetensors
  python -m softvq_jax.convert sit --weights HF_DIR --out DIR   (or --config/--weights files)
  python -m softvq_jax.convert sit-to-reference --checkpoint DIR_OR_WORKDIR --out model.safetensors
  python -m softvq_jax.convert dino-disc --weights disc.safetensors --out DIR [--variant S]
  python -m softvq_jax.convert dino-disc-to-reference --checkpoint DIR --out disc.safetensors

HF_DIR is a downloaded Hugging Face repo of the authors (`huggingface-cli download
SoftVQVAE/softvq-bl-64 --local-dir HF_DIR`: config.json + model.safetensors); --config defaults to
the config.json beside --weights. Weights are read with `softvq_jax.weights.io.load_state_dict`
(safetensors/npz; no torch needed); model dirs are written/read with
`softvq_jax.checkpointing.save_model` / `load_model`. A wrong input (unknown or mistyped config
key, int/bool or NaN tensor, missing key, bad shape, unparsable JSON) is refused with one line
naming the file and the key, exit status 2 (`--traceback` shows the traceback).

`dino-disc` converts the trainable heads of the reference DINO discriminator (a DinoDisc state
dict, a VQLoss state dict with its `discriminator.` prefix, or, with torch, the reference training
checkpoint `.pt`, whose "discriminator" entry is taken) into a model dir whose params pytree is
{"params": ..., "stats": {"spectral": ..., "batch_stats": ...}}: exactly the "params" and "stats"
entries of the tokenizer trainer's `TrainState.extra["disc"]`, which is what resuming a GAN run
needs (the optimizer state and LeCam EMAs restart; the frozen trunk comes from
`loss.disc.dino_path`). config.json records the sizes, `dino_variant` and the BatchNorms'
`num_batches_tracked`, which `dino-disc-to-reference` writes back (strict-loadable in PyTorch).
"""

from __future__ import annotations

import argparse
import io
import json
import sys

import numpy as np
from absl import logging
from etils import epath

from softvq_jax.utils.errors import UserError
from softvq_jax.utils.files import atomic_open
from softvq_jax.utils.paths import user_path
from softvq_jax.weights import sit


class OutputExistsError(UserError, FileExistsError):
  """The output of a conversion exists and --overwrite was not given."""


def _check_out(out: str, overwrite: bool) -> epath.Path:
  p = user_path(out)  # local or gs://
  if p.exists() and not overwrite:
    raise OutputExistsError(f"{p} exists; pass --overwrite to replace it")
  return p


def _reference_inputs(args: argparse.Namespace, what: str) -> tuple[epath.Path, epath.Path]:
  """(config, weights) of a released checkpoint (files or an HF folder), both checked to exist,
  then the output checked not to (inputs are reported first)."""
  from softvq_jax.weights import io as wio

  cfg, weights = wio.hf_files(args.config, args.weights)
  cfg = wio.require_file(cfg, f"reference {what} config", "--config")
  weights = wio.require_file(weights, f"reference {what} weights", "--weights")
  _check_out(args.out, args.overwrite)
  return cfg, weights


def _load_model_dir(path: str):
  """(tree, config) of a model dir; a path that is not one is a UserError naming it."""
  from softvq_jax import checkpointing

  try:
    return checkpointing.load_model(path)
  except FileNotFoundError as e:
    raise UserError(str(e)) from e


def _save_model(out: str, tree, config: dict, overwrite: bool) -> epath.Path:
  from softvq_jax import checkpointing

  _check_out(out, overwrite)
  return checkpointing.save_model(out, tree, config, overwrite=overwrite)


def write_state_dict(state_dict: dict, out: epath.Path) -> None:
  """A reference-layout state dict as .safetensors / .npz, or (torch installed) .pt/.pth/.bin."""
  from softvq_jax.weights import io as wio

  suffix = out.suffix.lower()
  if suffix == ".safetensors":
    wio.save_safetensors(state_dict, out)
  elif suffix == ".npz":
    with atomic_open(out) as f:
      np.savez(f, **state_dict)
  elif suffix in (".pt", ".pth", ".bin"):
    try:
      import torch
    except ImportError as e:
      raise UserError(
        f"{out}: writing a torch file needs torch; write .safetensors instead (PyTorch reads it "
        "with safetensors.torch.load_file)"
      ) from e
    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, buf)
    with atomic_open(out) as f:
      f.write(buf.getvalue())
  else:
    raise UserError(f"{out}: unknown output format {suffix!r}; use .safetensors, .npz or .pt")


def main_tokenizer(args: argparse.Namespace) -> epath.Path:
  """Reference config.json + weights -> an exported model dir (params + config.json)."""
  from softvq_jax import checkpointing
  from softvq_jax.weights.tokenizer import load_reference_tokenizer

  cfg, weights = _reference_inputs(args, "tokenizer")
  _, params, config = load_reference_tokenizer(cfg, weights)
  out = checkpointing.save_model(args.out, params, config, overwrite=args.overwrite)
  print(f"wrote {out}")
  return out


def main_tokenizer_to_reference(args: argparse.Namespace) -> epath.Path:
  """Exported model dir -> reference safetensors + config.json beside it."""
  from softvq_jax.weights.reference_config import model_to_reference_config
  from softvq_jax.weights.tokenizer import tokenizer_to_reference

  params, config = _load_model_dir(args.checkpoint)
  ref_config = config.get("reference_config")
  if ref_config:  # the original reference config, with the (possibly re-measured) latent stats
    ref_config = json.loads(json.dumps(ref_config))
    args_ = ref_config.get("model_args", ref_config)
    for key in ("vq_mean", "vq_std"):
      if key in config["model"]:
        args_[key] = config["model"][key]
  else:
    ref_config = model_to_reference_config(config)
  out = _check_out(args.out, args.overwrite)
  write_state_dict(tokenizer_to_reference(params, ref_config), out)
  cfg_out = out.parent / "config.json"
  with atomic_open(cfg_out, "w") as f:
    f.write(json.dumps(ref_config, indent=2))
  print(f"wrote {out} and {cfg_out}")
  return out


def add_reference_arguments(p: argparse.ArgumentParser, what: str) -> None:
  """--config / --weights / --out / --overwrite of the converters from a released checkpoint."""
  p.add_argument(
    "--config", default="", help=f"reference {what} config.json (default: beside --weights)"
  )
  p.add_argument(
    "--weights",
    required=True,
    help="model.safetensors (.npz; .pt/.pth/.bin with torch), or the downloaded HF repo folder",
  )
  p.add_argument("--out", required=True, help="output model directory")
  p.add_argument("--overwrite", action="store_true")


def add_sit_arguments(p: argparse.ArgumentParser) -> None:
  """Flags of `python -m softvq_jax.convert sit`."""
  add_reference_arguments(p, "SiT/DiT")
  p.add_argument(
    "--kind", choices=sorted(sit.MODELS), default=None, help="default: from the config"
  )


def main_sit(args: argparse.Namespace) -> epath.Path:
  """Reference config.json + weights -> model dir (params + config.json with `model`)."""
  from softvq_jax.weights import checks
  from softvq_jax.weights import io as wio

  cfg_path, w_path = _reference_inputs(args, "SiT")
  ref_config = checks.read_config(cfg_path, "reference SiT config", "--config")
  sit.model_from_reference_config(ref_config, args.kind)  # config errors first, naming its file
  state_dict = wio.load_state_dict(w_path, "reference SiT weights", "--weights")
  model, params = sit.sit_from_reference(ref_config, state_dict, args.kind)
  config = {"model": sit.generator_config(model), "reference_config": dict(ref_config)}
  out = _save_model(args.out, params, config, args.overwrite)
  print(f"wrote {out}")
  return out


def load_generator_params(path: str, step: int | None = None, raw: bool = False):
  """(model, params, config) of a generator model dir (`convert sit`, export) or training workdir
  (its EMA params, or the raw ones with `raw`, of `step` or the latest checkpoint)."""
  from softvq_jax import checkpointing
  from softvq_jax.models.sit import generator_from_train_config

  p = user_path(path)
  if (p / "config.json").is_file() and (p / "params").exists():
    params, config = _load_model_dir(p)
    m = config.get("model", {})
    if m.get("kind") not in sit.MODELS:
      raise UserError(
        f"{p}/config.json: not a SiT/DiT model dir (model.kind={m.get('kind')!r}, want one of "
        f"{sorted(sit.MODELS)})"
      )
    return sit.generator_from_config(m), params, config
  if not (p / "checkpoints").is_dir():
    raise UserError(
      f"{p} is neither a generator model dir (config.json + params/) nor a training workdir "
      "(checkpoints/)"
    )
  try:
    config = checkpointing.read_checkpoint_config(p, step)
  except FileNotFoundError as e:
    raise UserError(f"{p}: {e}") from e
  if config.get("trainer") not in sit.MODELS:
    raise UserError(f"{p}: not a SiT/DiT training workdir (trainer {config.get('trainer')!r})")
  model = generator_from_train_config(config["model"])
  abstract = sit.abstract_params(model)
  mngr = checkpointing.CheckpointManager(p, async_save=False)
  try:
    params = mngr.restore_params(checkpointing.abstract_like(abstract), ema=not raw, step=step)
  finally:
    mngr.close()
  return model, params, config


def main_sit_to_reference(args: argparse.Namespace) -> epath.Path:
  """Generator model dir / training workdir -> reference SiT/DiT state dict + HF config.json."""
  model, params, config = load_generator_params(args.checkpoint, args.step, args.raw)
  out = _check_out(args.out, args.overwrite)
  ref_config = config.get("reference_config")
  if not ref_config or sit.model_from_reference_config(ref_config) != model:
    ref_config = sit.reference_config(model)  # trained here (or re-typed): from the model
  write_state_dict(sit.sit_to_reference(params, model), out)
  cfg_out = out.parent / "config.json"
  with atomic_open(cfg_out, "w") as f:
    f.write(json.dumps(ref_config, indent=2))
  print(f"wrote {out} and {cfg_out}")
  return out


def add_sit_to_reference_parser(sub) -> None:
  p = sub.add_parser("sit-to-reference", help="softvq_jax SiT/DiT -> reference PyTorch layout")
  p.add_argument(
    "--checkpoint", required=True, help="generator model dir (convert sit) or training workdir"
  )
  p.add_argument(
    "--out", required=True, help="output .safetensors (.npz; .pt with torch); config.json beside"
  )
  p.add_argument("--step", type=int, default=None, help="workdir checkpoint step (default: last)")
  p.add_argument("--raw", action="store_true", help="workdir: raw params instead of EMA")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(func=main_sit_to_reference)


def main_dino_disc(args: argparse.Namespace) -> epath.Path:
  """Reference DinoDisc weights -> model dir with {"params", "stats"} (see the module docstring)."""
  from softvq_jax.models.frozen.dino import TRUNK_VARIANTS
  from softvq_jax.weights import dino_disc
  from softvq_jax.weights import io as wio

  wio.require_file(args.weights, dino_disc.WHAT, "--weights")
  _check_out(args.out, args.overwrite)
  sd = dino_disc.strip_prefix(dino_disc.load_reference_dino_disc(args.weights), args.prefix)
  width = TRUNK_VARIANTS[args.variant][1]
  params, state = dino_disc.dino_disc_from_reference(sd, width=width, prefix="")
  config = {
    "model": {
      "kind": "dino_disc",
      "dino_variant": args.variant,
      "width": width,
      "num_heads": len(params["heads"]),
      "kernel_size": int(params["heads"]["heads_0"]["res_conv"]["kernel"].shape[0]),
      "spectral": "spectral" in state,
    },
    "num_batches_tracked": dino_disc.reference_num_batches_tracked(sd, prefix=""),
    "source": str(args.weights),
  }
  tree = {"params": params, "stats": state}
  out = _save_model(args.out, tree, config, args.overwrite)
  print(f"wrote {out}")
  return out


def main_dino_disc_to_reference(args: argparse.Namespace) -> epath.Path:
  """Model dir written by `dino-disc` -> reference DinoDisc state dict (.safetensors)."""
  from softvq_jax.weights import dino_disc

  tree, config = _load_model_dir(args.checkpoint)
  out = _check_out(args.out, args.overwrite)
  if config.get("model", {}).get("kind") != "dino_disc" or set(tree) != {"params", "stats"}:
    raise UserError(f"{args.checkpoint} is not a DINO discriminator dir written by `dino-disc`")
  n = int(config.get("num_batches_tracked", 0))
  sd = dino_disc.dino_disc_to_reference(tree["params"], tree["stats"], num_batches_tracked=n)
  write_state_dict(sd, out)
  print(f"wrote {out}")
  return out


def add_dino_disc_parsers(sub) -> None:
  """The `dino-disc` and `dino-disc-to-reference` subcommands."""
  from softvq_jax.models.frozen.dino import TRUNK_VARIANTS

  p = sub.add_parser("dino-disc", help="reference DINO discriminator heads -> softvq_jax dir")
  p.add_argument(
    "--weights",
    required=True,
    help="DinoDisc state dict (.safetensors/.npz; .pt/.pth training checkpoint w/ torch)",
  )
  p.add_argument("--out", required=True, help="output directory ({params, stats} + config.json)")
  p.add_argument(
    "--variant", choices=sorted(TRUNK_VARIANTS), default="S", help="loss.disc.dino_variant"
  )
  p.add_argument(
    "--prefix", default=None, help="key prefix to strip (default: detected, e.g. discriminator.)"
  )
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(func=main_dino_disc)
  p = sub.add_parser("dino-disc-to-reference", help="dino-disc dir -> reference safetensors")
  p.add_argument("--checkpoint", required=True, help="directory written by `dino-disc`")
  p.add_argument("--out", required=True, help="output .safetensors")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(func=main_dino_disc_to_reference)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m softvq_jax.convert",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("tokenizer", help="reference SoftVQ checkpoint -> softvq_jax model dir")
  add_reference_arguments(p, "SoftVQ (HF SoftVQVAE/*)")
  p.set_defaults(func=main_tokenizer)
  p = sub.add_parser("tokenizer-to-reference", help="softvq_jax model dir -> reference safetensors")
  p.add_argument("--checkpoint", required=True, help="model dir written by save_model")
  p.add_argument("--out", required=True, help="output .safetensors (config.json goes beside it)")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(func=main_tokenizer_to_reference)
  p = sub.add_parser("sit", help="reference SiT/DiT checkpoint -> softvq_jax model dir")
  add_sit_arguments(p)
  p.set_defaults(func=main_sit)
  add_sit_to_reference_parser(sub)
  add_dino_disc_parsers(sub)
  return parser


def main(argv: list[str] | None = None):
  """Parses `argv` (default sys.argv[1:]) and runs the chosen subcommand; returns its result.

  Errors propagate (the CLI entry point `run` turns a UserError into one line and exit 2)."""
  logging.set_verbosity(logging.INFO)
  args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
  return args.func(args)


def run(argv: list[str] | None = None) -> None:
  """The command line: `main`, with a UserError printed as one line and exit status 2 (its
  traceback with `--traceback` anywhere on the line)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  traceback = "--traceback" in argv
  try:
    main([a for a in argv if a != "--traceback"])
  except UserError as e:
    if traceback:
      raise
    sys.stderr.write(f"python -m softvq_jax.convert: error: {e}\n")
    sys.exit(2)


if __name__ == "__main__":
  run()
