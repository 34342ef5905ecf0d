r"""Sample class-conditional images from a SiT/DiT generator: PNGs and an ADM `.npz`.

  python -m softvq_jax.sample --model runs/sit_xl --tokenizer exported/softvq_b64 --num 50000 \
      --batch 256 --sampler sde --steps 250 --cfg-scale 1.75 --cfg-interval 0,0.7 --out samples/

`--model` (or `--workdir`) is a training workdir (EMA params of the latest checkpoint) or a model
dir from `python -m softvq_jax.convert sit`; `--tokenizer` defaults to the one recorded in the
generator's config. Labels: `--classes` ("" = all, "0-9", "1,5,7") cycled to `--num` samples
(50 per class for 50k ImageNet samples). Writes `OUT/images/{i:06d}.png` (unless --no-png) and
`OUT/samples_{N}x{S}x{S}x3.npz` (`arr_0` uint8 NHWC, `arr_1` labels) for the ADM evaluator.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m softvq_jax.sample",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--model", help="generator model dir or training workdir")
  src.add_argument("--workdir", help="training workdir (same as --model)")
  p.add_argument("--tokenizer", default=None, help="tokenizer dir/workdir (default: recorded)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--raw", action="store_true", help="raw instead of EMA params (workdirs)")
  p.add_argument("--num", type=int, default=50_000, help="number of samples")
  p.add_argument("--classes", default="", help='"" = all classes, "0-9", "1,5,7"')
  p.add_argument("--batch", type=int, default=64, help="samples per batch (split over devices)")
  p.add_argument(
    "--sampler",
    choices=["ode", "sde", "diffusion"],
    default=None,
    help="default: sde for SiT, diffusion for DiT",
  )
  p.add_argument("--steps", type=int, default=250)
  p.add_argument("--heun", action="store_true", help="Heun instead of Euler (ode)")
  p.add_argument("--cfg-scale", type=float, default=1.75, help="1 disables guidance")
  p.add_argument(
    "--cfg-interval", default="0,0.7", help="SiT: guidance only for lo <= t <= hi (DiT: always)"
  )
  p.add_argument(
    "--path",
    choices=["linear", "cosine"],
    default="linear",
    help="interpolant path for the SDE's score (the one the model was trained on)",
  )
  p.add_argument("--noise-schedule", choices=["linear", "cosine"], default="cosine", help="DiT")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--no-png", action="store_true", help="write only the .npz")
  return p


def main(argv: list[str] | None = None) -> pathlib.Path:
  """Runs the command; returns the .npz path."""
  args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
  from softvq_jax.evaluation.adm_npz import SampleNpzWriter
  from softvq_jax.sampling import generate as g
  from softvq_jax.utils.images import save_png

  gen = g.load_generator(
    args.model or args.workdir, args.tokenizer, ema=not args.raw, step=args.step
  )
  if gen.tokenizer is None:
    raise SystemExit("no tokenizer recorded for this generator: pass --tokenizer DIR")
  lo, hi = (float(v) for v in args.cfg_interval.split(","))
  sampler = args.sampler or ("diffusion" if gen.is_dit else "sde")
  settings = g.SamplerSettings(
    sampler=sampler,
    steps=args.steps,
    heun=args.heun,
    cfg_scale=args.cfg_scale,
    cfg_interval=(lo, hi),
    path=args.path,
    noise_schedule=args.noise_schedule,
  )
  classes = g.parse_classes(args.classes, gen.model.num_classes)
  labels = classes[np.arange(args.num) % len(classes)]
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  s = gen.image_size
  npz = out / f"samples_{args.num}x{s}x{s}x3.npz"
  (out / "sampling.json").write_text(
    json.dumps(
      {**vars(args), "sampler": sampler, "vq_mean": gen.vq_mean, "vq_std": gen.vq_std}, indent=2
    )
  )
  t0, done = time.time(), 0
  with SampleNpzWriter(npz, args.num, (s, s, 3), with_labels=True) as writer:
    for images, lab in g.generate(gen, labels, settings, batch_size=args.batch, seed=args.seed):
      writer.write(images, lab)
      if not args.no_png:
        for j, im in enumerate(images):
          save_png(out / "images" / f"{done + j:06d}.png", im)
      done += len(images)
      rate = done / (time.time() - t0)
      print(f"{done}/{args.num} images ({rate:.2f} images/s)", flush=True)
  print(f"wrote {npz}")
  return npz


if __name__ == "__main__":
  main()
