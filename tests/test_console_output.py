"""What a person reads: the trainer's default console output is ours, steady and complete."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
FOREIGN = re.compile(
  r"(orbax|checkpoint_manager|atomicity|tensorflow|clu/|periodic_actions|"
  r"oneDNN|port\.cc|absl::InitializeLog|Setting work unit notes)"
)
PROGRESS = re.compile(r"step (\d+)/(\d+) .*\| ([0-9.e+-]+) steps/s, ([0-9.e+-]+) img/s")


def test_default_output_has_no_library_internals_and_steady_progress(tmp_path):
  config = tmp_path / "tiny.py"
  config.write_text(
    "import sys\n"
    f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
    "from test_tokenizer_trainer import tiny_config\n\n"
    "def get_config():\n"
    "  return tiny_config(total_steps=8, log_every=2, eval_every=8, image_every=8)\n"
  )
  proc = subprocess.run(
    [sys.executable, "-m", "softvq_jax.main", f"--config={config}", f"--workdir={tmp_path}/r"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env={k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
  )
  lines = proc.stderr.splitlines()
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not [ln for ln in lines if FOREIGN.search(ln)], "\n".join(lines)
  progress = [PROGRESS.search(ln) for ln in lines if PROGRESS.search(ln)]
  steps = [int(m.group(1)) for m in progress]
  assert steps == [2, 4, 6, 8], "\n".join(lines)
  rates = [float(m.group(3)) for m in progress]
  assert all(r > 0 for r in rates)
  # After the compiling window, rates are steady (no alternating ~0 / real values).
  assert max(rates[1:]) / min(rates[1:]) < 5, rates
  assert sum("trainable params" in ln for ln in lines) == 1  # the run summary, once
  assert any("eval @ 8" in ln for ln in lines)
  assert len(lines) < 25, "\n".join(lines)


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
