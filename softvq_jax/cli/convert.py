"""Command-line converters between released reference checkpoints and softvq_jax model dirs.

  python -m softvq_jax.convert tokenizer --config config.json --weights model.safetensors --out DIR
  python -m softvq_jax.convert tokenizer-to-reference --checkpoint DIR --out model.safetensors
  python -m softvq_jax.convert sit --config config.json --weights model.safetensors --out DIR
  python -m softvq_jax.convert dino-disc --weights disc.safetensors --out DIR [--variant S]
  python -m softvq_jax.convert dino-disc-to-reference --checkpoint DIR --out disc.safetensors

Weights are read with `softvq_jax.weights.io.load_state_dict` (safetensors/npz; no torch needed);
model dirs are written/read with `softvq_jax.checkpointing.save_model` / `load_model`.

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
import json
import pathlib
import sys

from absl import logging

from softvq_jax.weights import sit


def main_tokenizer(args: argparse.Namespace) -> pathlib.Path:
  """Reference config.json + weights -> an exported model dir (params + config.json)."""
  from softvq_jax import checkpointing
  from softvq_jax.weights.tokenizer import load_reference_tokenizer

  _, params, config = load_reference_tokenizer(args.config, args.weights)
  out = checkpointing.save_model(args.out, params, config, overwrite=args.overwrite)
  print(f"wrote {out}")
  return out


def main_tokenizer_to_reference(args: argparse.Namespace) -> pathlib.Path:
  """Exported model dir -> reference safetensors + config.json beside it."""
  from softvq_jax import checkpointing
  from softvq_jax.weights import io
  from softvq_jax.weights.reference_config import model_to_reference_config
  from softvq_jax.weights.tokenizer import tokenizer_to_reference

  params, config = checkpointing.load_model(args.checkpoint)
  ref_config = config.get("reference_config")
  if ref_config:  # the original reference config, with the (possibly re-measured) latent stats
    ref_config = json.loads(json.dumps(ref_config))
    args_ = ref_config.get("model_args", ref_config)
    for key in ("vq_mean", "vq_std"):
      if key in config["model"]:
        args_[key] = config["model"][key]
  else:
    ref_config = model_to_reference_config(config)
  out = pathlib.Path(args.out)
  if out.exists() and not args.overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  io.save_safetensors(tokenizer_to_reference(params, ref_config), out)
  cfg_out = out.parent / "config.json"
  cfg_out.write_text(json.dumps(ref_config, indent=2))
  print(f"wrote {out} and {cfg_out}")
  return out


def add_sit_arguments(p: argparse.ArgumentParser) -> None:
  """Flags of `python -m softvq_jax.convert sit`."""
  p.add_argument("--config", required=True, help="reference SiT/DiT config.json (HF repo)")
  p.add_argument("--weights", required=True, help="model.safetensors (.npz; .pth w/ torch)")
  p.add_argument("--out", required=True, help="output model directory")
  p.add_argument(
    "--kind", choices=sorted(sit.MODELS), default=None, help="default: from the config"
  )
  p.add_argument("--overwrite", action="store_true")


def main_sit(args: argparse.Namespace) -> pathlib.Path:
  """Reference config.json + weights -> model dir (params + config.json with `model`)."""
  from softvq_jax import checkpointing
  from softvq_jax.weights import io

  cfg_path = io.require_file(args.config, "reference SiT config", "--config")
  ref_config = json.loads(cfg_path.read_text())
  state_dict = io.load_state_dict(args.weights, "reference SiT weights", "--weights")
  model, params = sit.sit_from_reference(ref_config, state_dict, args.kind)
  config = {"model": sit.generator_config(model), "reference_config": ref_config}
  out = checkpointing.save_model(args.out, params, config, overwrite=args.overwrite)
  print(f"wrote {out}")
  return out


def main_dino_disc(args: argparse.Namespace) -> pathlib.Path:
  """Reference DinoDisc weights -> model dir with {"params", "stats"} (see the module docstring)."""
  from softvq_jax import checkpointing
  from softvq_jax.models.frozen.dino import TRUNK_VARIANTS
  from softvq_jax.weights import dino_disc

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
  out = checkpointing.save_model(args.out, tree, config, overwrite=args.overwrite)
  print(f"wrote {out}")
  return out


def main_dino_disc_to_reference(args: argparse.Namespace) -> pathlib.Path:
  """Model dir written by `dino-disc` -> reference DinoDisc state dict (.safetensors)."""
  from softvq_jax import checkpointing
  from softvq_jax.weights import dino_disc, io

  tree, config = checkpointing.load_model(args.checkpoint)
  if config.get("model", {}).get("kind") != "dino_disc" or set(tree) != {"params", "stats"}:
    raise ValueError(f"{args.checkpoint} is not a DINO discriminator dir written by `dino-disc`")
  out = pathlib.Path(args.out)
  if out.exists() and not args.overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  n = int(config.get("num_batches_tracked", 0))
  sd = dino_disc.dino_disc_to_reference(tree["params"], tree["stats"], num_batches_tracked=n)
  io.save_safetensors(sd, out)
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
  p.add_argument("--config", required=True, help="reference config.json (HF SoftVQVAE/* repo)")
  p.add_argument("--weights", required=True, help="model.safetensors (or .npz)")
  p.add_argument("--out", required=True, help="output model directory")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(func=main_tokenizer)
  p = sub.add_parser("tokenizer-to-reference", help="softvq_jax model dir -> reference safetensors")
  p.add_argument("--checkpoint", required=True, help="model dir written by save_model")
  p.add_argument("--out", required=True, help="output .safetensors (config.json goes beside it)")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(func=main_tokenizer_to_reference)
  p = sub.add_parser("sit", help="reference SiT/DiT checkpoint -> softvq_jax model dir")
  add_sit_arguments(p)
  p.set_defaults(func=main_sit)
  add_dino_disc_parsers(sub)
  return parser


def main(argv: list[str] | None = None):
  """Parses `argv` (default sys.argv[1:]) and runs the chosen subcommand; returns its result."""
  logging.set_verbosity(logging.INFO)
  args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
  return args.func(args)


if __name__ == "__main__":
  main()
