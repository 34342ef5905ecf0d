r"""A small reproduction study: SoftVQ vs VQ vs KL vs AE at 16/32/64 tokens (+ tau, codebooks).

The same small tokenizer (configs/tokenizer_b.py:quick: ViT 3+3 x 128, patch 8, 64 px, D=16,
codebooks 2 x 512, MSE (+ the quantizer's own terms), no GAN, no LPIPS/DINO losses) is trained with
quantizer.name in {softvq, vq, kl, ae} at 16, 32 and 64 latent tokens, with the same steps, seed,
batch and optimiser for every arm; plus a tau sweep {0.03, 0.07, 0.2, 1.0} and a codebook-count
sweep {1, 2, 4} of softvq at 32 tokens (the arm of the main grid is reused where they coincide).

Per arm and seed, with the package's own trainer / cache writer / evaluator:
  1. tokenizer: `softvq_jax.training.registry.run` on the resolved config (= `python -m
     softvq_jax.main`; the equivalent command is written to <workdir>/command.txt);
  2. reconstruction metrics (`evaluation.tokenizer_eval.evaluate_tokenizer`) on held-out views:
     PSNR, SSIM (uint8, range 255), LPIPS (with --lpips_weights), codebook usage / perplexity;
     the same on fixed views of the training photos (capacity of the bottleneck);
  3. latent caches of the training / held-out views (`training.online_latents`, as
     `python -m softvq_jax.data.cache_latents`), then a small SiT (configs/sit_s.py:quick) on the
     training latents, normalised by the cache's vq_mean / vq_std (so the flow-matching losses of
     different latent spaces are in the same units);
  4. generation figures: the SiT's held-out flow-matching loss (EMA, fixed keys) and, for
     unconditional ODE samples decoded to pixels, an RBF-kernel MMD^2 and the mean nearest-neighbour
     RMSE against the held-out views (16x16 pooled pixels in [0, 1]).

Outputs under --out: results.csv / results.json (one row per arm x seed + mean/std per arm),
results.md (tables), tokens.png, tau.png, codebooks.png. Work dirs (checkpoints, caches) go to
--work, one per arm x seed; a rerun skips arms with a done.json and resumes unfinished ones from
their checkpoints.

  python benchmarks/quantizer_study.py --out=docs/study --work=/tmp/study_work
  python benchmarks/quantizer_study.py --out=runs/study --steps=5000 --seeds=3 --image_size=128 \
      --dataset=folder --data_path=/data/train --eval_path=/data/val --lpips_weights=vgg_lpips.pth
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUANTIZERS = ("softvq", "vq", "kl", "ae")
CODEBOOK_QUANTIZERS = ("softvq", "vq")
DEFAULT_TAU, DEFAULT_NC = 0.07, 2  # the :quick recipe's values
METRICS = (
  "psnr",
  "ssim",
  "lpips",
  "mse_uint8",
  "psnr_train",
  "ssim_train",
  "codebook_usage",
  "codebook_perplexity",
  "gen_loss",
  "gen_loss_raw",
  "gen_mmd",
  "gen_nn_rmse",
  "vq_std",
  "seconds",
)
ARM_KEYS = ("arm", "quantizer", "tokens", "tau", "num_codebooks", "groups")
RUN_COLUMNS = (*ARM_KEYS, "seed", *METRICS)


# ---- arms -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Arm:
  quantizer: str
  tokens: int
  tau: float = DEFAULT_TAU
  num_codebooks: int = DEFAULT_NC

  @property
  def name(self) -> str:
    s = f"{self.quantizer}_t{self.tokens}"
    if self.quantizer == "softvq" and self.tau != DEFAULT_TAU:
      s += f"_tau{self.tau:g}"
    if self.quantizer in CODEBOOK_QUANTIZERS and self.num_codebooks != DEFAULT_NC:
      s += f"_nc{self.num_codebooks}"
    return s


def parse_arm(name: str) -> Arm:
  """'softvq_t32_tau0.2_nc4' -> Arm."""
  parts = name.split("_")
  if parts[0] not in QUANTIZERS or len(parts) < 2 or not parts[1].startswith("t"):
    raise ValueError(f"arm {name!r}: expected <quantizer>_t<tokens>[_tau<x>][_nc<n>]")
  kw = dict(quantizer=parts[0], tokens=int(parts[1][1:]))
  for p in parts[2:]:
    if p.startswith("tau"):
      kw["tau"] = float(p[3:])
    elif p.startswith("nc"):
      kw["num_codebooks"] = int(p[2:])
    else:
      raise ValueError(f"arm {name!r}: unknown part {p!r}")
  return Arm(**kw)


def plan_arms(args) -> list[tuple[Arm, list[str]]]:
  """The arms of the requested sweeps, each once, with the groups (tables/plots) it belongs to."""
  out: dict[Arm, list[str]] = {}

  def add(arm, group):
    out.setdefault(arm, [])
    if group not in out[arm]:
      out[arm].append(group)

  if args.arms:
    for name in _csv(args.arms):
      arm = parse_arm(name)
      add(arm, "main" if arm == Arm(arm.quantizer, arm.tokens) else "extra")
      if arm.quantizer == "softvq" and arm.tokens == args.sweep_tokens:
        if arm.num_codebooks == DEFAULT_NC:
          add(arm, "tau")
        if arm.tau == DEFAULT_TAU:
          add(arm, "codebooks")
    return list(out.items())
  sweeps = _csv(args.sweeps)
  if "main" in sweeps:
    for q in _csv(args.quantizers):
      for t in _ints(args.tokens):
        add(Arm(q, t), "main")
  if "tau" in sweeps:
    for tau in map(float, _csv(args.taus)):
      add(Arm("softvq", args.sweep_tokens, tau=tau), "tau")
  if "codebooks" in sweeps:
    for nc in _ints(args.codebooks):
      add(Arm("softvq", args.sweep_tokens, num_codebooks=nc), "codebooks")
  return list(out.items())


def job_order(plan, seeds: int, sweep_tokens: int) -> list[tuple[Arm, int]]:
  """Seed by seed; within a seed the main grid at `sweep_tokens` first (the headline
  comparison), then the other token counts, then the sweeps: a partial sweep is useful."""
  rank = lambda item: (
    0 if "main" in item[1] and item[0].tokens == sweep_tokens else 1 if "main" in item[1] else 2
  )
  ordered = sorted(plan, key=rank)  # stable: plan order within a rank
  return [(arm, seed) for seed in range(seeds) for arm, _ in ordered]


def _csv(s: str) -> list[str]:
  return [x.strip() for x in str(s).split(",") if x.strip()]


def _ints(s: str) -> list[int]:
  return [int(x) for x in _csv(s)]


# ---- configs ------------------------------------------------------------------------------


def data_overrides(args) -> dict:
  """The tokenizer's data.* keys for --dataset (photos: the bundled photos, random crops)."""
  if args.dataset == "photos":
    return {"data.name": "photos"}
  if args.dataset == "folder":
    return {"data.name": "folder", "data.path": args.data_path, "data.eval_path": args.eval_path}
  return {"data.name": "imagenet", "data.data_dir": args.data_dir}


def tokenizer_overrides(args, arm: Arm, seed: int) -> dict:
  """--config.* overrides of configs/tokenizer_b.py:quick for one arm (same for all but the arm)."""
  steps = args.steps
  o = {
    "seed": seed,
    "total_steps": steps,
    "batch_size": args.batch,
    "optim.lr": args.lr,
    "optim.warmup_steps": min(50, max(1, steps // 10)),
    "model.image_size": args.image_size,
    "model.num_latent_tokens": arm.tokens,
    "model.codebook_embed_dim": args.dim,
    "quantizer.name": arm.quantizer,
    "quantizer.tau": arm.tau,
    "quantizer.num_codebooks": arm.num_codebooks,
    "loss.disc.weight": 0.0,  # no GAN: the study isolates the bottleneck (and is cheaper)
    "log_every": max(1, min(50, steps // 4)),
    "eval_every": steps,
    "image_every": steps,
    "ckpt.save_every": max(1, steps // 4),
    "data.num_workers": 2,
  }
  if args.width:
    for part in ("encoder", "decoder"):
      o[f"model.{part}.width"] = args.width
      o[f"model.{part}.heads"] = max(1, args.width // 32)
  if args.depth:
    o["model.encoder.depth"] = o["model.decoder.depth"] = args.depth
  o.update(data_overrides(args))
  return o


def generator_overrides(args, seed: int, train_cache, eval_cache) -> dict:
  """--config.* overrides of configs/sit_s.py:quick (a tiny SiT on the arm's latent cache)."""
  g = args.gen_steps
  return {
    "seed": seed,
    "total_steps": g,
    "data.path": str(train_cache),
    "data.eval_path": str(eval_cache),
    "log_every": max(1, min(100, g // 4)),
    "eval_every": g,
    "image_every": g,
    "ckpt.save_every": max(1, g // 2),
    "eval.batch_size": 32,
    "eval.num_batches": 10_000,  # the whole held-out cache, fixed keys
    "eval.num_images_grid": 8,
    "sampling.steps": args.sample_steps,
  }


def build_config(spec: str, overrides: dict):
  """`get_config(arg)` of configs/<spec> with `overrides` applied, validated (as main does)."""
  import importlib.util

  from softvq_jax.config.validate import validate

  path, _, arg = spec.partition(":")
  mod_spec = importlib.util.spec_from_file_location("_study_cfg", ROOT / path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  config = mod.get_config(arg or None)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f"config key {key!r} does not exist in {spec}")
    node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], float) else value
  validate(config)
  return config


def command_line(spec: str, overrides: dict, workdir) -> str:
  flags = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
  return f"python -m softvq_jax.main --config={spec} --workdir={workdir} {flags}\n"


# ---- stages -------------------------------------------------------------------------------


def _finished(workdir: pathlib.Path, steps: int) -> bool:
  p = workdir / "eval_summary.json"
  if not p.is_file():
    return False
  s = json.loads(p.read_text())
  return s.get("total_steps") == steps and s.get("final_eval", {}).get("step") == steps


def train(spec: str, overrides: dict, workdir: pathlib.Path, steps: int) -> dict:
  """Trains (or resumes, or skips when finished) one run with the package's trainer."""
  from softvq_jax.training import registry

  if not _finished(workdir, steps):
    config = build_config(spec, overrides)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "command.txt").write_text(command_line(spec, overrides, workdir))
    registry.run(config, str(workdir))
  return json.loads((workdir / "eval_summary.json").read_text())


def write_views(args, work: pathlib.Path) -> dict:
  """Photos: fixed crops of the training / held-out photos as PNG folders (created once).

  Returns the data section (folder) the evaluation and the latent caches read. Train views
  follow the training crop distribution (20-100% of the short side); view 0 is the center crop.
  """
  import ml_collections
  from PIL import Image

  from softvq_jax import data
  from softvq_jax.config import defaults
  from softvq_jax.data import preprocess

  base = defaults.tokenizer_config("B").data
  if args.dataset != "photos":
    base.update(ml_collections.ConfigDict({k[5:]: v for k, v in data_overrides(args).items()}))
    return base
  root = work / f"views_{args.image_size}px"
  for split, n_views, sub in (
    ("train", args.train_views, "train"),
    ("eval", args.eval_views, "eval"),
  ):
    d = root / sub
    if (d / ".complete").is_file():
      continue
    d.mkdir(parents=True, exist_ok=True)
    src = data.source(ml_collections.ConfigDict({"name": "photos"}), split)
    for i in range(len(src)):
      image, _ = src.load(i)
      for v in range(n_views):
        rng = np.random.default_rng([7, i, v, 0 if split == "train" else 1])
        if v == 0:
          arr = preprocess.center_crop_arr(image, args.image_size)
        else:
          arr = preprocess.random_crop_arr(image, args.image_size, rng, min_crop_frac=0.2)
        Image.fromarray(np.asarray(arr, np.uint8)).save(d / f"{i:02d}_{v:02d}.png")
    (d / ".complete").write_text("")
  base.name, base.path, base.eval_path = "folder", str(root / "train"), str(root / "eval")
  return base


def reconstruction_metrics(args, tok_dir, out_dir, data_cfg, split_path=None) -> dict:
  """evaluate_tokenizer on the held-out split (or, with split_path, that folder as held-out)."""
  from softvq_jax.evaluation import common, tokenizer_eval

  summary_path = out_dir / "summary.json"
  if summary_path.is_file():
    return json.loads(summary_path.read_text())
  cfg = data_cfg.copy_and_resolve_references()
  if split_path is not None:
    cfg.eval_path = split_path
  lin = args.lpips_weights or None
  return tokenizer_eval.evaluate_tokenizer(
    str(tok_dir),
    out_dir,
    data_cfg=cfg,
    num_images=args.eval_images,
    crops=1,
    batch_size=32,
    inception_path=args.inception or None,
    feature_fn=None if args.inception else common.tiny_feature_fn(),
    lpips_vgg=(args.lpips_vgg or None) if lin else None,
    lpips_lin=lin,
    grid_images=8,
    resume=False,
    log_every_s=60.0,
  )


def latent_cache(tok, tok_dir, data_cfg, split, out, max_examples) -> pathlib.Path:
  """The cache of `split` (center crops + flips), as `python -m softvq_jax.data.cache_latents`."""
  from softvq_jax import data
  from softvq_jax.training import online_latents

  out = pathlib.Path(out)
  if (out / "cache_info.json").is_file():
    return out
  online_latents.encode_with_tokenizer(
    tok,
    data.source(data_cfg, split),
    out,
    tokenizer_path=str(tok_dir),
    dataset=data_cfg.name,
    split=split,
    batch_size=32,
    dtype="float32",
    max_examples=max_examples or None,
    overwrite=out.exists(),
    num_workers=2,
  )
  return out


def held_out_images(data_cfg, image_size: int, limit: int) -> np.ndarray:
  """uint8 (N, S, S, 3) held-out images (the evaluation's views, in order)."""
  from softvq_jax import data
  from softvq_jax.utils.images import to_uint8

  ev = data.build_eval_data(data_cfg, image_size=image_size, batch_size=32)
  out = []
  for b in ev.iterator():
    keep = np.asarray(b["mask"], bool)
    out.append(np.asarray(to_uint8(np.asarray(b["image"])[keep], np)))
    if limit and sum(map(len, out)) >= limit:
      break
  x = np.concatenate(out)
  return x[:limit] if limit else x


def _pooled(images: np.ndarray, size: int = 16) -> np.ndarray:
  x = np.asarray(images, np.float64) / 255.0
  n, h, w, c = x.shape
  f = max(1, h // size)
  x = x[:, : h // f * f, : w // f * f].reshape(n, h // f, f, w // f, f, c).mean((2, 4))
  return x.reshape(n, -1)


def kernel_distances(gen: np.ndarray, ref: np.ndarray) -> dict:
  """Unbiased MMD^2 (RBF, per-dim bandwidths 0.05/0.1/0.2 summed) and mean NN RMSE, pooled px."""
  a, b = _pooled(gen), _pooled(ref)
  d = a.shape[1]

  def sq(x, y):
    return np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2 * x @ y.T, 0.0)

  aa, bb, ab = sq(a, a), sq(b, b), sq(a, b)
  k = lambda m: sum(np.exp(-m / (2 * s * s * d)) for s in (0.05, 0.1, 0.2))
  off = lambda m: (m.sum() - np.trace(m)) / (len(m) * (len(m) - 1))
  mmd = off(k(aa)) + off(k(bb)) - 2 * k(ab).mean()
  nn = np.sqrt(ab.min(1) / d).mean()
  return {"gen_mmd": float(mmd), "gen_nn_rmse": float(nn)}


def generation_metrics(args, sit_dir, tok, ref_images: np.ndarray, seed: int) -> dict:
  """Unconditional ODE samples of the SiT (EMA), decoded, vs the held-out images."""
  from softvq_jax.sampling import generate as generate_lib

  gen = generate_lib.load_generator(sit_dir, tokenizer=tok)
  settings = generate_lib.SamplerSettings(
    sampler="ode", steps=args.sample_steps, cfg_scale=1.0, cfg_interval=(0.0, 1.0)
  )
  labels = np.full(args.samples, gen.model.num_classes)  # the null label: unconditional
  images = generate_lib.generate_images(gen, labels, settings, batch_size=args.samples, seed=seed)
  return kernel_distances(images, ref_images), images


def run_arm(args, arm: Arm, seed: int, work: pathlib.Path, data_cfg, ref_images, log) -> dict:
  """All stages of one arm x seed in its own workdir; returns the metrics (and writes done.json)."""
  from softvq_jax.utils import images as image_utils
  from softvq_jax.utils.files import atomic_open
  from softvq_jax.weights import pretrained

  wd = work / arm.name / f"seed{seed}"
  t0 = time.time()
  times = {}
  tok_dir = wd / "tokenizer"
  log("tokenizer")
  overrides = tokenizer_overrides(args, arm, seed)
  train("configs/tokenizer_b.py:quick", overrides, tok_dir, args.steps)
  times["tokenizer"] = time.time() - t0
  log("reconstruction metrics")
  rec = reconstruction_metrics(args, tok_dir, wd / "eval_heldout", data_cfg)
  train_path = data_cfg.path if data_cfg.name == "folder" else None
  rec_train = (
    reconstruction_metrics(args, tok_dir, wd / "eval_train", data_cfg, split_path=train_path)
    if train_path
    else {}
  )
  times["eval"] = time.time() - t0 - sum(times.values())
  log("latent caches + SiT")
  tok = pretrained.load_tokenizer(tok_dir)
  train_cache = latent_cache(tok, tok_dir, data_cfg, "train", wd / "cache_train", args.cache_images)
  eval_cache = latent_cache(tok, tok_dir, data_cfg, "eval", wd / "cache_eval", args.eval_images)
  sit_dir = wd / "sit"
  g = train(
    "configs/sit_s.py:quick",
    generator_overrides(args, seed, train_cache, eval_cache),
    sit_dir,
    args.gen_steps,
  )
  times["sit"] = time.time() - t0 - sum(times.values())
  log("samples")
  dist, samples = generation_metrics(args, sit_dir, tok, ref_images, seed)
  image_utils.save_png(wd / "samples.png", image_utils.make_grid(samples[:16], ncols=8))
  times["samples"] = time.time() - t0 - sum(times.values())
  final = g.get("final_eval", {})
  info = json.loads((train_cache / "cache_info.json").read_text())
  m = {
    "psnr": rec.get("psnr"),
    "ssim": rec.get("ssim"),
    "lpips": rec.get("lpips"),
    "mse_uint8": rec.get("mse_uint8"),
    "psnr_train": rec_train.get("psnr"),
    "ssim_train": rec_train.get("ssim"),
    "codebook_usage": rec.get("codebook_usage") if arm.quantizer in CODEBOOK_QUANTIZERS else None,
    "codebook_perplexity": (
      rec.get("codebook_perplexity") if arm.quantizer in CODEBOOK_QUANTIZERS else None
    ),
    "gen_loss": final.get("eval/ema_loss"),
    "gen_loss_raw": final.get("eval/raw_loss"),
    **dist,
    "vq_std": info.get("vq_std"),
    "seconds": time.time() - t0,
  }
  if args.inception:
    m["rfid"] = rec.get("rfid")
  row = {**arm_row(arm), "seed": seed, **m, "stage_seconds": times, "settings": settings(args)}
  with atomic_open(wd / "done.json", "w") as f:
    json.dump(row, f, indent=2)
  return row


def arm_row(arm: Arm) -> dict:
  uses_tau = arm.quantizer == "softvq"
  uses_nc = arm.quantizer in CODEBOOK_QUANTIZERS
  return {
    "arm": arm.name,
    "quantizer": arm.quantizer,
    "tokens": arm.tokens,
    "tau": arm.tau if uses_tau else None,
    "num_codebooks": arm.num_codebooks if uses_nc else None,
  }


SETTING_KEYS = (
  "steps",
  "gen_steps",
  "batch",
  "lr",
  "image_size",
  "dim",
  "dataset",
  "width",
  "depth",
  "samples",
  "sample_steps",
  "eval_images",
  "train_views",
  "eval_views",
  "cache_images",
)


def settings(args) -> dict:
  return {k: getattr(args, k) for k in SETTING_KEYS}


# ---- aggregation and outputs --------------------------------------------------------------


def aggregate(rows: list[dict]) -> list[dict]:
  """Mean and (sample) std over seeds per arm; None where a metric is absent."""
  out = []
  by_arm: dict[str, list[dict]] = {}
  for r in rows:
    by_arm.setdefault(r["arm"], []).append(r)
  for rs in by_arm.values():
    agg = {k: rs[0][k] for k in ARM_KEYS}
    agg["n_seeds"] = len(rs)
    for k in METRICS:
      v = [r[k] for r in rs if r.get(k) is not None]
      agg[f"{k}_mean"] = float(np.mean(v)) if v else None
      agg[f"{k}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else (0.0 if v else None)
    out.append(agg)
  return out


def _fmt(v, digits=3) -> str:
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return ""
  if isinstance(v, float):
    return (
      f"{v:.{digits}g}" if abs(v) < 1e-2 and v != 0 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    )
  return str(v)


def write_csv(path: pathlib.Path, rows: list[dict], aggs: list[dict]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=RUN_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: ("|".join(v) if isinstance(v, list) else v) for k, v in r.items()})
    for stat in ("mean", "std"):
      for a in aggs:
        row = {k: a[k] for k in ARM_KEYS}
        row["groups"] = "|".join(a["groups"])
        row["seed"] = stat
        row.update({k: a[f"{k}_{stat}"] for k in METRICS})
        w.writerow(row)


MD_COLUMNS = (
  ("psnr", "PSNR held-out (dB)", 2),
  ("ssim", "SSIM held-out", 3),
  ("lpips", "LPIPS", 3),
  ("psnr_train", "PSNR train views (dB)", 2),
  ("codebook_usage", "code usage", 3),
  ("codebook_perplexity", "perplexity", 1),
  ("gen_loss", "SiT held-out FM loss", 3),
  ("gen_mmd", "sample MMD^2", 4),
  ("gen_nn_rmse", "sample NN RMSE", 3),
)


def _cell(a: dict, k: str, digits: int) -> str:
  m, s = a.get(f"{k}_mean"), a.get(f"{k}_std")
  if m is None:
    return "–"
  if a["n_seeds"] > 1 and s is not None:
    return f"{m:.{digits}f} ± {s:.{digits}f}"
  return f"{m:.{digits}f}"


def markdown(aggs: list[dict], args, notes: list[str], wall: float) -> str:
  cols = [c for c in MD_COLUMNS if any(a.get(f"{c[0]}_mean") is not None for a in aggs)]
  head = "| arm | quantizer | tokens | tau | codebooks | seeds | " + " | ".join(c[1] for c in cols)
  sep = "|" + "---|" * (6 + len(cols))

  def table(group, key):
    sel = [a for a in aggs if group in a["groups"]]
    sel.sort(key=key)
    lines = [head + " |", sep]
    for a in sel:
      cells = [
        a["arm"],
        a["quantizer"],
        str(a["tokens"]),
        _fmt(a["tau"]),
        _fmt(a["num_codebooks"]),
        str(a["n_seeds"]),
      ]
      cells += [_cell(a, k, d) for k, _, d in cols]
      lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

  s = settings(args)
  out = [
    "# Quantizer study: SoftVQ vs VQ vs KL vs AE",
    "",
    "Settings: " + ", ".join(f"{k}={v}" for k, v in s.items()) + f", seeds={args.seeds}.",
    f"Wall time of the runs recorded here: {wall / 60:.1f} min (sum of per-arm times).",
    "Mean ± sample std over seeds where more than one seed ran.",
    "",
  ]
  order = {q: i for i, q in enumerate(QUANTIZERS)}
  groups = (
    ("main", "Main grid (quantizer x tokens)", lambda a: (order[a["quantizer"]], a["tokens"])),
    ("tau", "SoftVQ tau sweep", lambda a: a["tau"] or 0),
    ("codebooks", "SoftVQ codebook-count sweep", lambda a: a["num_codebooks"] or 0),
    ("extra", "Other arms", lambda a: a["arm"]),
  )
  for group, title, key in groups:
    if any(group in a["groups"] for a in aggs):
      out += [f"## {title}", "", table(group, key), ""]
  if notes:
    out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
  return "\n".join(out)


# ---- plots (PIL: matplotlib is not a dependency) ------------------------------------------

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


def panel(title, xlabel, series, logx=False, size=(420, 300)):
  """A line chart with error bars: series = [(label, xs, ys, yerrs)]; returns a PIL image."""
  from PIL import Image, ImageDraw

  w, h = size
  img = Image.new("RGB", size, "white")
  dr = ImageDraw.Draw(img)
  left, right, top, bottom = 58, 12, 26, 40
  pts = [
    (x, y, e or 0.0)
    for _, xs, ys, es in series
    for x, y, e in zip(xs, ys, es)
    if y is not None and math.isfinite(y)
  ]
  dr.text((left, 6), title, fill="black")
  if not pts:
    dr.text((left, h // 2), "no data", fill="gray")
    return img
  tx = (lambda x: math.log10(x)) if logx else (lambda x: x)
  xs_all = sorted({p[0] for p in pts})
  x0, x1 = tx(xs_all[0]), tx(xs_all[-1])
  if x1 == x0:
    x0, x1 = x0 - 1, x1 + 1
  pad = 0.06 * (x1 - x0)
  x0, x1 = x0 - pad, x1 + pad
  y0 = min(p[1] - p[2] for p in pts)
  y1 = max(p[1] + p[2] for p in pts)
  if y1 == y0:
    y0, y1 = y0 - 1, y1 + 1
  pad = 0.08 * (y1 - y0)
  y0, y1 = y0 - pad, y1 + pad
  px = lambda x: left + (tx(x) - x0) / (x1 - x0) * (w - left - right)
  py = lambda y: top + (y1 - y) / (y1 - y0) * (h - top - bottom)
  dr.rectangle([left, top, w - right, h - bottom], outline="black")
  digits = max(3, 2 + math.ceil(-math.log10(max(y1 - y0, 1e-12)) + math.log10(max(abs(y1), 1e-12))))
  for i in range(5):
    yv = y0 + (y1 - y0) * i / 4
    dr.line([left - 4, py(yv), left, py(yv)], fill="black")
    dr.text((4, py(yv) - 6), f"{yv:.{min(digits, 6)}g}", fill="black")
  for xv in xs_all:
    dr.line([px(xv), h - bottom, px(xv), h - bottom + 4], fill="black")
    dr.text((px(xv) - 8, h - bottom + 6), f"{xv:g}", fill="black")
  dr.text((w // 2 - 3 * len(xlabel), h - 16), xlabel, fill="black")
  for i, (label, xs, ys, es) in enumerate(series):
    c = COLORS[i % len(COLORS)]
    p = [(px(x), py(y), e) for x, y, e in zip(xs, ys, es) if y is not None and math.isfinite(y)]
    for (xa, ya, _), (xb, yb, _) in zip(p, p[1:]):
      dr.line([xa, ya, xb, yb], fill=c, width=2)
    for (xa, ya, e), y in zip(p, [y for y in ys if y is not None and math.isfinite(y)]):
      if e:
        dr.line([xa, py(y - e), xa, py(y + e)], fill=c, width=1)
        dr.line([xa - 3, py(y - e), xa + 3, py(y - e)], fill=c)
        dr.line([xa - 3, py(y + e), xa + 3, py(y + e)], fill=c)
      dr.ellipse([xa - 3, ya - 3, xa + 3, ya + 3], fill=c)
    dr.text((w - right - 70, top + 4 + 12 * i), label, fill=c)
  return img


def figure(path, panels) -> None:
  from PIL import Image

  w = sum(p.width for p in panels)
  out = Image.new("RGB", (w, max(p.height for p in panels)), "white")
  x = 0
  for p in panels:
    out.paste(p, (x, 0))
    x += p.width
  out.save(path)


PLOT_METRICS = (
  ("psnr", "PSNR held-out (dB)"),
  ("ssim", "SSIM held-out"),
  ("gen_loss", "SiT held-out FM loss"),
  ("gen_mmd", "sample MMD^2"),
)


def write_plots(out: pathlib.Path, aggs: list[dict]) -> list[str]:
  made = []

  def series(sel, x_key, label_key):
    groups: dict[str, list[dict]] = {}
    for a in sel:
      groups.setdefault(label_key(a), []).append(a)
    return groups

  main = [a for a in aggs if "main" in a["groups"]]
  if main:
    panels = []
    for k, title in PLOT_METRICS:
      ser = []
      for q in QUANTIZERS:
        rs = sorted([a for a in main if a["quantizer"] == q], key=lambda a: a["tokens"])
        if rs:
          ser.append(
            (
              q,
              [a["tokens"] for a in rs],
              [a[f"{k}_mean"] for a in rs],
              [a[f"{k}_std"] for a in rs],
            )
          )
      panels.append(panel(title, "latent tokens", ser, logx=True))
    figure(out / "tokens.png", panels)
    made.append("tokens.png")
  for group, key, xlabel, logx in (
    ("tau", "tau", "tau", True),
    ("codebooks", "num_codebooks", "codebooks", False),
  ):
    rs = sorted([a for a in aggs if group in a["groups"]], key=lambda a: a[key])
    if not rs:
      continue
    panels = []
    for k, title in (
      *PLOT_METRICS[:1],
      ("codebook_perplexity", "code perplexity"),
      PLOT_METRICS[2],
    ):
      xs = [a[key] for a in rs]
      panels.append(
        panel(
          title,
          xlabel,
          [("softvq", xs, [a[f"{k}_mean"] for a in rs], [a[f"{k}_std"] for a in rs])],
          logx,
        )
      )
    figure(out / f"{group}.png", panels)
    made.append(f"{group}.png")
  return made


def write_outputs(args, out: pathlib.Path, rows: list[dict], plan, notes, wall) -> None:
  """results.csv / .json / .md and the plots (rewritten after every finished arm)."""
  from softvq_jax.utils.files import atomic_open

  groups = {arm.name: g for arm, g in plan}
  rows = sorted(rows, key=lambda r: (list(groups).index(r["arm"]), r["seed"]))
  for r in rows:
    r["groups"] = groups[r["arm"]]
  aggs = aggregate(rows)
  out.mkdir(parents=True, exist_ok=True)
  write_csv(out / "results.csv", rows, aggs)
  plots = write_plots(out, aggs)
  doc = {
    "settings": {**settings(args), "seeds": args.seeds},
    "command": " ".join(["python", "benchmarks/quantizer_study.py", *sys.argv[1:]]),
    "notes": notes,
    "runs": [{k: v for k, v in r.items() if k != "settings"} for r in rows],
    "aggregate": aggs,
    "plots": plots,
    "wall_seconds": wall,
  }
  with atomic_open(out / "results.json", "w") as f:
    json.dump(doc, f, indent=2)
  with atomic_open(out / "results.md", "w") as f:
    f.write(markdown(aggs, args, notes, wall))


# ---- main ---------------------------------------------------------------------------------


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="results.csv/json/md and the PNG plots go here")
  p.add_argument("--work", default="", help="per-arm work dirs (default: <out>/work)")
  p.add_argument("--steps", type=int, default=300, help="tokenizer steps per arm")
  p.add_argument("--gen_steps", type=int, default=500, help="SiT steps per arm")
  p.add_argument("--seeds", type=int, default=1, help="seeds per arm (error bars from >= 2)")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--image_size", type=int, default=64)
  p.add_argument("--dim", type=int, default=16, help="latent dims per token (codebook_embed_dim)")
  p.add_argument("--width", type=int, default=0, help="ViT width (0: the :quick 128)")
  p.add_argument("--depth", type=int, default=0, help="ViT depth of encoder and decoder (0: 3)")
  p.add_argument("--dataset", choices=("photos", "folder", "imagenet"), default="photos")
  p.add_argument("--data_path", default="", help="folder: training images")
  p.add_argument("--eval_path", default="", help="folder: held-out images")
  p.add_argument("--data_dir", default="", help="imagenet: the TFDS data_dir")
  p.add_argument("--quantizers", default=",".join(QUANTIZERS))
  p.add_argument("--tokens", default="16,32,64")
  p.add_argument("--taus", default="0.03,0.07,0.2,1.0")
  p.add_argument("--codebooks", default="1,2,4")
  p.add_argument("--sweep_tokens", type=int, default=32, help="tokens of the tau/codebook sweeps")
  p.add_argument("--sweeps", default="main,tau,codebooks")
  p.add_argument(
    "--arms", default="", help="explicit arms, e.g. softvq_t32,vq_t16,softvq_t32_tau0.2"
  )
  p.add_argument("--train_views", type=int, default=8, help="photos: fixed crops per train photo")
  p.add_argument(
    "--eval_views", type=int, default=16, help="photos: fixed crops per held-out photo"
  )
  p.add_argument("--eval_images", type=int, default=0, help="held-out images (0: all)")
  p.add_argument("--cache_images", type=int, default=0, help="training images cached for the SiT")
  p.add_argument("--samples", type=int, default=32, help="SiT samples per arm")
  p.add_argument("--sample_steps", type=int, default=20, help="ODE (Euler) steps")
  p.add_argument("--lpips_weights", default="", help="LPIPS heads (vgg.pth) or full state dict")
  p.add_argument("--lpips_vgg", default="", help="VGG16 trunk for LPIPS if not in --lpips_weights")
  p.add_argument("--inception", default="", help="pt_inception weights: adds rFID (tiny sets!)")
  args = p.parse_args(argv)
  if args.dataset == "folder" and not args.data_path:
    p.error("--dataset=folder needs --data_path (and optionally --eval_path)")
  if args.dataset == "imagenet" and not args.eval_images:
    args.eval_images = 1000
  if args.dataset == "imagenet" and not args.cache_images:
    args.cache_images = 10_000
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  from absl import flags
  from absl import logging as absl_logging

  if not flags.FLAGS.is_parsed():
    flags.FLAGS(["quantizer_study"])
  from softvq_jax.utils import cli

  absl_logging.set_verbosity(absl_logging.INFO)
  cli.hide_accelerators_from_tf()

  out = pathlib.Path(args.out)
  s = settings(args)
  tag = f"s{args.steps}_g{args.gen_steps}_{args.image_size}px_{args.dataset}"
  work = pathlib.Path(args.work or out / "work") / tag
  work.mkdir(parents=True, exist_ok=True)
  plan = plan_arms(args)
  jobs = job_order(plan, args.seeds, args.sweep_tokens)
  notes = [
    "Tokenizer: configs/tokenizer_b.py:quick (ViT "
    f"{args.depth or 3}+{args.depth or 3} x {args.width or 128}, patch 8) at {args.image_size}px, "
    f"D={args.dim}, codebooks 2 x 512 (softvq/vq), MSE + quantizer terms, no GAN/LPIPS/DINO; "
    f"{args.steps} steps at batch {args.batch}, lr {args.lr}, seeds 0..{args.seeds - 1}.",
    f"Generator: configs/sit_s.py:quick (SiT 'mu', 2 x 64) for {args.gen_steps} steps on the "
    "arm's cached training latents, normalised by the cache's vq_mean/vq_std; 'SiT held-out FM "
    "loss' = its EMA flow-matching loss on the held-out latents (fixed keys); samples: "
    f"{args.samples} unconditional ODE samples ({args.sample_steps} Euler steps) decoded and "
    "compared with the held-out views (16x16 pooled pixels).",
  ]
  if args.dataset == "photos":
    notes.append(
      "Data: the bundled photos (9 scikit-image training photos, random crops of 20-100% of "
      f"the short side; held out: scikit-learn's china and flower, {args.eval_views} fixed crops "
      f"each). 'train views': {args.train_views} fixed crops per training photo. No other RGB "
      "photos install offline (the remaining scikit-image images are grayscale or synthetic)."
    )
  if not args.lpips_weights:
    notes.append("LPIPS skipped: no --lpips_weights given.")
  if args.inception:
    notes.append("rFID computed with --inception (few images: not comparable to the paper).")
  else:
    notes.append("rFID not computed (needs --inception and thousands of images).")
  rows, t_start = [], time.time()
  data_cfg = ref = None
  ran = []  # seconds of arms trained in this invocation (for the ETA)
  for i, (arm, seed) in enumerate(jobs, 1):
    wd = work / arm.name / f"seed{seed}"
    done = wd / "done.json"
    prefix = f"[study] arm {i}/{len(jobs)} {arm.name} seed {seed}"
    if done.is_file() and json.loads(done.read_text()).get("settings") == s:
      rows.append(json.loads(done.read_text()))
      print(f"{prefix}: done already, skipped ({done})", flush=True)
      continue
    if data_cfg is None:  # the held-out views, once, for the first arm that runs
      data_cfg = write_views(args, work)
      ref = held_out_images(data_cfg, args.image_size, args.eval_images)

    left = len(jobs) - i + 1

    def log(stage, prefix=prefix, left=left):
      el = time.time() - t_start
      eta = f", ETA {_hms(np.mean(ran) * left)}" if ran else ""
      print(f"{prefix}: {stage} | elapsed {_hms(el)}{eta}", flush=True)

    t_arm = time.time()
    row = run_arm(args, arm, seed, work, data_cfg, ref, log)
    ran.append(time.time() - t_arm)
    rows.append(row)
    print(
      f"{prefix}: finished in {_hms(ran[-1])} | psnr {_fmt(row['psnr'])} ssim "
      f"{_fmt(row['ssim'])} gen_loss {_fmt(row['gen_loss'])} gen_mmd {_fmt(row['gen_mmd'])}",
      flush=True,
    )
    write_outputs(args, out, rows, plan, notes, sum(r["seconds"] for r in rows))
  write_outputs(args, out, rows, plan, notes, sum(r["seconds"] for r in rows))
  print(
    f"[study] {len(jobs)} arm x seed runs ({len(ran)} trained now) in "
    f"{_hms(time.time() - t_start)}; results in {out}",
    flush=True,
  )
  return 0


def _hms(s: float) -> str:
  s = int(s)
  return (
    f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
  )


def _console_logging() -> None:
  """The trainer's own INFO lines (progress, evals) on stderr, other libraries' only if WARNING+."""
  import logging

  from absl import logging as absl_logging

  from softvq_jax.utils import logs

  absl_logging.use_absl_handler()
  logging.root.handlers = [absl_logging.get_absl_handler()]
  logs.configure(0)


if __name__ == "__main__":
  _console_logging()
  from softvq_jax.training.signals import TrainingStopped

  try:
    sys.exit(main())
  except TrainingStopped as stopped:  # SIGTERM/SIGINT: the running arm saved a checkpoint
    print(f"[study] stopped ({stopped}); rerun the same command to resume", flush=True)
    sys.exit(stopped.exit_code)
