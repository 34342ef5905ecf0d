"""What a person reads: main refuses a user's mistake in one line (the default console output of
a run is checked on the README's quick start, tests/test_readme.py)."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


@pytest.mark.parametrize(
  "args,named",
  [
    (["data.name=folder"], "--config.data.name=folder"),  # the README's old broken line
    (["--config.optim.lrr=1"], "did you mean 'optim.lr'"),
    (["--config.optim.lr=abc"], "optim.lr"),
    (["--config.data.path=/x"], "data.path"),  # set but ignored by data.name=photos
    (["--config.data.name=folder", "--config.data.path=/nonexistent"], "/nonexistent"),
  ],
)
def test_main_refuses_user_mistakes_in_one_line(tmp_path, args, named):
  workdir = tmp_path / "run"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "softvq_jax.main",
      "--config=configs/tokenizer_s.py:quick",
      f"--workdir={workdir}",
      *args,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [ln for ln in lines if ln.startswith("error:")]
  assert len(errors) == 1 and named in errors[0], proc.stderr
  assert "Traceback" not in proc.stderr and len(lines) <= 3, proc.stderr
  assert not (workdir / "config.json").exists() and not (workdir / "checkpoints").exists()
