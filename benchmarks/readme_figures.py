"""Reruns the README's quick commands and prints the figures the README quotes.

    python benchmarks/readme_figures.py [--workdir=runs/readme_figures] [--check=README.md]

Runs, exactly as the README shows them (each in a fresh subfolder of --workdir): the quick
tokenizer (`configs/tokenizer_b.py:quick`, 1000 steps on the bundled photos), its latent cache,
and the quick SiT on that cache. Prints the wall time of each and their first/final held-out
evaluations. The evaluations are deterministic on a given machine; with --check, each one is
looked up in the README (as printed here, e.g. "0.342 to 0.264") and a missing one is an error,
so a README figure that no longer matches a fresh run is caught. Timings depend on the machine
and its load and are only printed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> float:
  t = time.perf_counter()
  print("$", " ".join(args), flush=True)
  subprocess.run([sys.executable, *args], cwd=ROOT, check=True)
  return time.perf_counter() - t


def _evals(workdir: pathlib.Path) -> tuple[dict, dict]:
  summary = json.loads((workdir / "eval_summary.json").read_text())
  return summary["first_eval"], summary["final_eval"]


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="runs/readme_figures")
  ap.add_argument("--check", default="", help="README to look the deterministic figures up in")
  a = ap.parse_args()
  out = (ROOT / a.workdir).resolve()
  shutil.rmtree(out, ignore_errors=True)
  tok, cache, sit = out / "quick", out / "caches_photos", out / "sit_quick"
  t_tok = _run(
    ["-m", "softvq_jax.main", "--config=configs/tokenizer_b.py:quick", f"--workdir={tok}"]
  )
  t_cache = _run(["-m", "softvq_jax.data.cache_latents", f"--tokenizer={tok}", f"--out={cache}"])
  t_sit = _run(
    [
      "-m",
      "softvq_jax.main",
      "--config=configs/sit_s.py:quick",
      f"--workdir={sit}",
      f"--config.data.path={cache}",
    ]
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
