"""benchmarks/quantizer_study.py end to end at a tiny size: outputs' schema, and a rerun skips."""

import csv
import importlib.util
import json
import pathlib
import sys
import time

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARMS = ("softvq_t16", "ae_t16")


def _study():
  if "quantizer_study" in sys.modules:
    return sys.modules["quantizer_study"]
  path = ROOT / "benchmarks" / "quantizer_study.py"
  spec = importlib.util.spec_from_file_location("quantizer_study", path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules["quantizer_study"] = mod  # dataclasses look their module up
  spec.loader.exec_module(mod)
  return mod


def test_arm_names_round_trip():
  study = _study()
  for name in ("softvq_t32", "vq_t16", "kl_t64", "softvq_t32_tau0.2", "softvq_t32_nc4"):
    assert study.parse_arm(name).name == name
  args = study.parse_args(["--out=x"])
  plan = study.plan_arms(args)
  names = [a.name for a, _ in plan]
  assert len(names) == len(set(names)) == 12 + 3 + 2  # the shared softvq_t32 arm runs once
  assert set(dict((a.name, g) for a, g in plan)["softvq_t32"]) == {"main", "tau", "codebooks"}


def test_tiny_sweep_outputs_and_resume(tmp_path, capsys):
  study = _study()
  out, work = tmp_path / "out", tmp_path / "work"
  argv = [
    f"--out={out}",
    f"--work={work}",
    f"--arms={','.join(ARMS)}",
    "--steps=2",
    "--gen_steps=2",
    "--image_size=32",
    "--width=32",
    "--depth=1",
    "--train_views=2",
    "--eval_views=2",
    "--samples=8",
    "--sample_steps=2",
  ]
  assert study.main(argv) == 0

  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert tuple(rows[0]) == study.RUN_COLUMNS
  assert [r["seed"] for r in rows] == ["0", "0", "mean", "mean", "std", "std"]
  assert {r["arm"] for r in rows} == set(ARMS)
  for r in rows[:2]:
    for k in ("psnr", "ssim", "psnr_train", "gen_loss", "gen_mmd", "gen_nn_rmse"):
      assert np.isfinite(float(r[k])), (r["arm"], k)
    assert r["lpips"] == ""  # no weights: skipped, with a note
  soft = next(r for r in rows if r["arm"] == "softvq_t16")
  assert 0 < float(soft["codebook_usage"]) <= 1 and float(soft["codebook_perplexity"]) >= 1
  assert next(r for r in rows if r["arm"] == "ae_t16")["codebook_usage"] == ""

  doc = json.loads((out / "results.json").read_text())
  assert {"settings", "command", "notes", "runs", "aggregate", "plots", "wall_seconds"} <= set(doc)
  assert len(doc["runs"]) == 2 and len(doc["aggregate"]) == 2
  for a in doc["aggregate"]:
    assert {"arm", "n_seeds", "psnr_mean", "psnr_std", "gen_loss_mean"} <= set(a)
  assert any("LPIPS skipped" in n for n in doc["notes"])

  md = (out / "results.md").read_text()
  table = [line for line in md.splitlines() if line.startswith("| ") and "_t16" in line]
  assert len(table) == 2 and "PSNR held-out" in md
  for name in doc["plots"]:
    with Image.open(out / name) as im:
      im.load()
      assert im.size[0] > 100 and im.size[1] > 100
  assert "tokens.png" in doc["plots"]

  done = sorted(work.glob("*/*/seed0/done.json"))
  assert len(done) == 2
  stamps = [p.stat().st_mtime_ns for p in done]
  capsys.readouterr()
  t0 = time.time()
  assert study.main(argv) == 0
  rerun = time.time() - t0
  log = capsys.readouterr().out
  assert log.count("done already, skipped") == 2
  assert "(0 trained now)" in log
  assert [p.stat().st_mtime_ns for p in done] == stamps  # nothing retrained or rewritten
  assert rerun < 10, rerun
  assert json.loads((out / "results.json").read_text())["runs"] == doc["runs"]
