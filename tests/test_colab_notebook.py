"""Runs launch/colab/softvq_eval.ipynb headless (nbclient) on a tiny random tokenizer."""

import pathlib

import pytest
from tiny_models import TOKENIZER_SIZE as S
from tiny_models import save_tiny_sit, save_tiny_tokenizer

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).parents[1]
NOTEBOOK = ROOT / "launch" / "colab" / "softvq_eval.ipynb"


def _set_parameters(nb, **values):
  """Rewrites the cell tagged `parameters`: each NAME = ... line gets the given value."""
  (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  lines = cell.source.splitlines()
  for name, value in values.items():
    idx = [i for i, line in enumerate(lines) if line.startswith(f"{name} =")]
    assert idx, f"parameter {name} not in the notebook's parameters cell"
    lines[idx[0]] = f"{name} = {value!r}"
  cell.source = "\n".join(lines)


def test_notebook_runs_headless(tmp_path):
  model = save_tiny_tokenizer(tmp_path / "tok")
  sit = str(save_tiny_sit(tmp_path / "sit", model))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  install = "".join(c.source for c in nb.cells if "INSTALL_FROM =" in c.source)
  assert 'INSTALL_FROM = ""' in install and "pip" in install  # one cell: a path or URL
  assert "YOUR_ORG" not in "".join(c.source for c in nb.cells)
  _set_parameters(  # SAMPLE_CLASSES stays None: the tiny SiT's own 10 classes
    nb,
    TOKENIZER=str(model),
    SIT=sit,
    SAMPLE_STEPS=2,
    OUT=str(tmp_path / "out"),
  )
  client = nbclient.NotebookClient(
    nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
  )
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "tokenizer: 32px, 8 tokens" in text and "'psnr'" in text and "'rfid'" in text
  assert "np.float" not in text  # plain floats in the printed tables
  assert any("image/png" in o.get("data", {}) for o in outputs)  # the comparison grid
  assert (tmp_path / "out" / "rfid" / "summary.json").is_file()
  if sit:  # 8 default classes spread over the model's 0..9 (ImageNet ids would fail)
    assert f"samples: (8, {S}, {S}, 3) uint8" in text
