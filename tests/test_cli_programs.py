"""What the command-line programs make, on tiny random models: `python -m softvq_jax.reconstruct`
(files and folders -> PNG reconstructions, and its Python one-liner), `python -m
softvq_jax.sample`'s PNG grid, and `export`'s latent statistics capped by the dataset size.

The reconstructions are checked against an independent path: PIL crop as ADM (short side
resized, center square), the tokenizer's own encode/decode, and the ADM uint8 conversion.
"""

import numpy as np
import pytest
from PIL import Image
from tiny_models import TOKENIZER_SIZE as S
from tiny_models import save_tiny_sit, save_tiny_tokenizer

from softvq_jax.cli import export
from softvq_jax.cli import reconstruct as reconstruct_cli
from softvq_jax.cli import sample as sample_cli
from softvq_jax.data import preprocess
from softvq_jax.utils import images as image_utils
from softvq_jax.weights import pretrained


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("models")
  tok = save_tiny_tokenizer(root / "tok")
  return tok, save_tiny_sit(root / "sit", tok)


def _photo(path, size, seed):
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
  return path


def _expected(tok, path):
  """Independent reconstruction: ADM center crop, encode/decode, ADM uint8."""
  crop = preprocess.center_crop_arr(Image.open(path).convert("RGB"), S)
  x = np.asarray(crop, np.float32)[None] / 127.5 - 1.0
  return image_utils.to_uint8(np.asarray(tok.decode(tok.encode(x)[0])))[0]


def test_file_folder_and_python_api(models, tmp_path, capsys):
  tok_dir, _ = models
  tok = pretrained.load_tokenizer(tok_dir)
  src = tmp_path / "in"
  (src / "sub").mkdir(parents=True)
  a = _photo(src / "a.jpg", (40, 56), 0)
  b = _photo(src / "sub" / "b.png", (70, 33), 1)
  (src / "notes.txt").write_text("not an image")

  with pytest.raises(SystemExit) as e:  # one file -> one PNG
    reconstruct_cli.run([f"--model={tok_dir}", str(a), str(tmp_path / "a_rec.png")])
  assert e.value.code == 0 and "reconstructed 1 image" in capsys.readouterr().out
  got = np.asarray(Image.open(tmp_path / "a_rec.png"))
  assert got.shape == (S, S, 3)
  assert np.abs(got.astype(int) - _expected(tok, a)).max() <= 1  # jit vs eager rounding

  with pytest.raises(SystemExit) as e:  # a folder -> a folder, relative paths kept
    reconstruct_cli.run([f"--model={tok_dir}", str(src), str(tmp_path / "out"), "--batch_size=1"])
  assert e.value.code == 0
  outs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*"))
  assert outs == ["a.png", "sub", "sub/b.png"]
  got_b = np.asarray(Image.open(tmp_path / "out" / "sub" / "b.png"))
  assert np.abs(got_b.astype(int) - _expected(tok, b)).max() <= 1

  from softvq_jax.reconstruct import reconstruct  # the one-liner, through the alias module

  (pair,) = reconstruct(tok, a, tmp_path / "pair", compare=True)
  side = np.asarray(Image.open(pair))
  assert pair.name == "a.png" and side.shape == (S + 4, 2 * S + 6, 3)  # crop | reconstruction
  np.testing.assert_array_equal(side[2 : 2 + S, S + 4 : 2 * S + 4], got)


def test_sample_writes_a_png_grid(models, tmp_path, capsys):
  tok_dir, sit_dir = models
  args = [f"--model={sit_dir}", f"--out={tmp_path}", "--num=5", "--batch=5", "--steps=2"]
  with pytest.raises(SystemExit) as e:
    sample_cli.run([*args, "--sampler=ode", "--grid=4", "--no-png"])  # old spelling still works
  assert e.value.code == 0, capsys.readouterr().err
  grid = np.asarray(Image.open(tmp_path / "grid.png"))
  assert grid.shape == (2 + 2 * (S + 2), 2 + 2 * (S + 2), 3)  # 4 samples, 2 x 2
  assert not (tmp_path / "images").exists()
  with np.load(tmp_path / f"samples_5x{S}x{S}x3.npz") as f:
    first = f["arr_0"][0]
    np.testing.assert_array_equal(f["arr_1"], np.arange(5))  # the model's own classes 0..9
  np.testing.assert_array_equal(grid[2 : 2 + S, 2 : 2 + S], first)


def test_export_statistics_are_capped_by_the_dataset(models, capsys):
  """--stats_images=10000 over the 9 bundled photos: one pass over the 9, said so, with progress."""
  tok = pretrained.load_tokenizer(models[0])  # its config's data: the bundled photos
  mean, std, n = export.latent_statistics(tok, 10_000, log_every_s=0.0)
  out = capsys.readouterr().out
  assert n == 9 and "latent statistics over 9 training images (the whole training set" in out
  assert "9/9 images" in out  # the progress line
  again, _, m = export.latent_statistics(tok, 4)
  assert m == 4 and np.isfinite([mean, std, again]).all() and std > 0 and again != mean
