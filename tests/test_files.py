"""Written files get normal permissions (not mkstemp's 0600 / mkdtemp's 0700) and appear whole."""

import os
import stat

import numpy as np
import pytest

from softvq_jax import checkpointing
from softvq_jax.utils import files, images


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_get_the_modes_open_and_mkdir_give(tmp_path):
  old = os.umask(0o022)
  try:
    assert files.file_mode() == 0o644 and files.dir_mode() == 0o755
    png = images.save_png(tmp_path / "a" / "grid.png", np.zeros((4, 4, 3), np.uint8))
    npz = files.save_npz_atomic(tmp_path / "state.npz", {"x": np.arange(3)})
    model = checkpointing.save_model(tmp_path / "model", {"w": np.ones(2, np.float32)}, {"a": 1})
  finally:
    os.umask(old)
  assert _mode(png) == _mode(npz) == _mode(model / "config.json") == 0o644
  assert _mode(model) == 0o755
  assert not [p for p in tmp_path.rglob(".*tmp*")], "no temporary file is left"


def test_a_failed_write_leaves_nothing(tmp_path):
  with pytest.raises(RuntimeError), files.atomic_open(tmp_path / "x.bin") as f:
    f.write(b"partial")
    raise RuntimeError("boom")
  assert list(tmp_path.iterdir()) == []


def test_safetensors_get_normal_modes(tmp_path):
  from softvq_jax.weights.io import save_safetensors

  old = os.umask(0o022)
  try:
    save_safetensors({"w": np.ones(2, np.float32)}, tmp_path / "w.safetensors")
  finally:
    os.umask(old)
  assert _mode(tmp_path / "w.safetensors") == 0o644
