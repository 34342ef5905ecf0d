"""Reruns the README's quick commands and prints the figures the README quotes.

    python benchmarks/readme_figures.py [--workdir=runs/readme_figures] [--check=README.md]

Runs, exactly as the README shows them (each in a fresh subfolder of --workdir): the quick
tokenizer (`configs/tokenizer_b.py:quick`, 1000 steps on the bundled photos), its latent cache,
and the quick SiT on that cache. Prints the wall time of each and their first/final held-out
evaluations, and writes the README's result images to docs/ (the final reconstruction grid,
the SiT sample grid and both loss curves from the TensorBoard events); --reuse keeps finished
runs of an earlier call. The evaluations are deterministic on a given machine; with --check,
each one is looked up in the README (as printed here, e.g. "0.342 to 0.264") and a missing one
is an error, so a README figure that no longer matches a fresh run is caught. Timings depend on
the machine and its load and are only printed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> float:
  t = time.perf_counter()
  print("$", " ".join(args), flush=True)
  subprocess.run([sys.executable, *args], cwd=ROOT, check=True)
  return time.perf_counter() - t


def _scalars(workdir: pathlib.Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of one TensorBoard scalar of a run (all event files, in step order)."""
  import tensorflow as tf

  points = {}
  for events in sorted(workdir.glob("events.out.tfevents.*")):
    for e in tf.compat.v1.train.summary_iterator(str(events)):
      for v in e.summary.value:
        if v.tag == tag:
          points[e.step] = (
            float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
          )
  steps = np.asarray(sorted(points))
  return steps, np.asarray([points[k] for k in steps])


def _plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: pathlib.Path, title: str):
  """A small log-scale line chart (PIL only): one polyline per curve, min/max labelled."""
  w, h, m = 640, 320, 48
  img = Image.new("RGB", (w, h), "white")
  d = ImageDraw.Draw(img)
  d.rectangle([m, m // 2, w - m // 2, h - m], outline="black")
  d.text((m, 4), title, fill="black")
  ys = np.log10(np.concatenate([v for _, v in curves.values()]))
  xs = np.concatenate([s for s, _ in curves.values()])
  lo, hi, x1 = ys.min(), ys.max(), max(xs.max(), 1)
  colours = ["#1f77b4", "#d62728", "#2ca02c"]
  for (name, (s, v)), c in zip(curves.items(), colours, strict=False):
    pts = [
      (m + (w - 1.5 * m) * x / x1, h - m - (h - 1.5 * m) * (np.log10(y) - lo) / max(hi - lo, 1e-9))
      for x, y in zip(s, v, strict=True)
    ]
    d.line(pts, fill=c, width=2)
    d.text((w - 3 * m, m // 2 + 4 + 12 * list(curves).index(name)), name, fill=c)
  d.text((4, m // 2), f"{10**hi:.3g}", fill="black")
  d.text((4, h - m - 10), f"{10**lo:.3g}", fill="black")
  d.text((w - m, h - m + 4), f"{int(x1)}", fill="black")
  d.text((m, h - m + 4), "0 (step)", fill="black")
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path)


def _evals(workdir: pathlib.Path) -> tuple[dict, dict]:
  summary = json.loads((workdir / "eval_summary.json").read_text())
  return summary["first_eval"], summary["final_eval"]


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="runs/readme_figures")
  ap.add_argument("--check", default="", help="README to look the deterministic figures up in")
  ap.add_argument("--reuse", action="store_true", help="keep finished runs of an earlier call")
  ap.add_argument("--docs", default="docs", help="where the README's result images go")
  a = ap.parse_args()
  out = (ROOT / a.workdir).resolve()
  if not a.reuse:
    shutil.rmtree(out, ignore_errors=True)
  tok, cache, sit = out / "quick", out / "caches_photos", out / "sit_quick"
  t_tok = t_cache = t_sit = 0.0
  if not (tok / "eval_summary.json").exists():
    t_tok = _run(
      ["-m", "softvq_jax.main", "--config=configs/tokenizer_b.py:quick", f"--workdir={tok}"]
    )
  if not cache.exists():
    t_cache = _run(["-m", "softvq_jax.data.cache_latents", f"--tokenizer={tok}", f"--out={cache}"])
  if not (sit / "eval_summary.json").exists():
    t_sit = _run(
      [
        "-m",
        "softvq_jax.main",
        "--config=configs/sit_s.py:quick",
        f"--workdir={sit}",
        f"--config.data.path={cache}",
      ]
    )
  docs = ROOT / a.docs
  docs.mkdir(exist_ok=True)
  last = lambda d, pattern: sorted((d / "images").glob(pattern))[-1]
  shutil.copy(last(tok, "reconstruction_*.png"), docs / "quick_reconstructions.png")
  shutil.copy(last(sit, "samples_*.png"), docs / "quick_sit_samples.png")
  _plot(
    {"train loss": _scalars(tok, "loss")},
    docs / "quick_tokenizer_loss.png",
    "quick tokenizer: training loss (log scale)",
  )
  _plot(
    {"train loss": _scalars(sit, "loss"), "eval loss (raw)": _scalars(sit, "eval/raw_loss")},
    docs / "quick_sit_loss.png",
    "quick SiT: flow-matching loss (log scale)",
  )
  (tf, tl), (sf, sl) = _evals(tok), _evals(sit)
  figures = {
    "tokenizer EMA held-out MSE": f"{tf['eval/ema_mse']:.3f} to {tl['eval/ema_mse']:.3f}",
    "tokenizer EMA held-out PSNR": f"{tf['eval/ema_psnr']:.1f} -> {tl['eval/ema_psnr']:.1f} dB",
    "SiT eval loss (raw)": f"{sf['eval/raw_loss']:.3f} (step {sf['step']}) -> "
    f"{sl['eval/raw_loss']:.3f} (step {sl['step']})",
  }
  print(f"\ntimes: tokenizer {t_tok / 60:.1f} min, cache {t_cache:.0f} s, SiT {t_sit:.0f} s")
  for name, value in figures.items():
    print(f"{name}: {value}")
  if a.check:
    text = (ROOT / a.check).read_text()
    missing = [f"{n}: {v}" for n, v in figures.items() if v not in text]
    if missing:
      print(f"\n{a.check} does not quote: " + "; ".join(missing), file=sys.stderr)
      return 1
    print(f"\n{a.check} quotes every figure")
  return 0


if __name__ == "__main__":
  sys.exit(main())
