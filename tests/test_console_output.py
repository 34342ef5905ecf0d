"""What a person reads: the trainer's default console output is ours, steady and complete."""

import pathlib
import re
import subprocess
import sys

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
