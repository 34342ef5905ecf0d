"""The trainer's own MFU and profiler: a tiny CPU run of the real loop with a given peak.

perf/tflops_per_device and perf/mfu (= TFLOP/s / config.peak_tflops) are written to TensorBoard
at every log window, and profile.num_steps > 0 leaves a jax.profiler trace under
<workdir>/profile.
"""

import pytest
from test_tokenizer_objective import _read_scalars
from test_tokenizer_trainer import tiny_config

from softvq_jax.training import loop
from softvq_jax.training.tokenizer import TokenizerTask


def test_mfu_scalars_and_profile_trace(tmp_path):
  config = tiny_config(**{"peak_tflops": 0.5, "profile.start_step": 2, "profile.num_steps": 1})
  config.total_steps, config.log_every, config.ckpt.save_every = 3, 1, 100
  config.eval_every = config.image_every = 100  # only at the last step
  loop.train(TokenizerTask, config, str(tmp_path))
  scalars = _read_scalars(tmp_path)
  tflops, mfu = scalars["perf/tflops_per_device"], scalars["perf/mfu"]
  assert sorted(mfu) == sorted(tflops) == [1, 2, 3]
  for step in mfu:
    assert tflops[step] > 0
    assert mfu[step] == pytest.approx(tflops[step] / 0.5, rel=1e-5)
  traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
  assert traces, sorted(str(p) for p in (tmp_path / "profile").rglob("*"))
