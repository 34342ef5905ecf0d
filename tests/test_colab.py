"""Colab helpers: released-folder loading (converted in memory), image preparation, grids."""

import json

import numpy as np
from PIL import Image
from tiny_models import TOKENIZER_SIZE as S
from tiny_models import save_tiny_tokenizer

from softvq_jax import checkpointing, colab
from softvq_jax.evaluation import image_metrics
from softvq_jax.weights import io as wio
from softvq_jax.weights import pretrained, tokenizer_to_reference
from softvq_jax.weights.reference_config import model_to_reference_config


def test_released_folder_loads_like_the_model_dir(tmp_path):
  model_dir = save_tiny_tokenizer(tmp_path / "model")
  params, config = checkpointing.load_model(model_dir)
  released = tmp_path / "released"  # the HF SoftVQVAE/* layout
  released.mkdir()
  ref_config = model_to_reference_config(config)
  wio.save_safetensors(tokenizer_to_reference(params, ref_config), released / "model.safetensors")
  (released / "config.json").write_text(json.dumps(ref_config))

  a, b = colab.load_tokenizer(released), pretrained.load_tokenizer(model_dir)
  photos = colab.bundled_photos("eval")
  x = colab.prepare_images([photos[0], np.asarray(photos[1]), photos[0].convert("L")], S)
  assert x.shape == (3, S, S, 3) and x.dtype == np.float32 and -1 <= x.min() < x.max() <= 1
  orig, rec = colab.reconstruct(a, x, batch_size=2)
  _, rec_b = colab.reconstruct(b, x)
  np.testing.assert_array_equal(orig, image_metrics.to_uint8(x))
  assert rec.dtype == np.uint8 and np.abs(rec.astype(int) - rec_b).max() <= 1

  table = colab.image_metrics_table(orig, rec)
  np.testing.assert_allclose(table["psnr"], image_metrics.psnr(orig, rec, 255.0), rtol=1e-6)
  pair = colab.comparison(orig, rec, ncols=3)
  assert isinstance(pair, Image.Image) and pair.size == (2 + 6 * (S + 2), 2 + S + 2)
  assert colab.grid(rec, ncols=2).size == (2 + 2 * (S + 2), 2 + 2 * (S + 2))


def test_default_sample_classes_come_from_the_model():
  """Not ImageNet ids for a small model (they failed with `labels must be in [0, 16]`)."""
  small = colab.default_classes(17)
  assert len(small) == 8 and min(small) == 0 and max(small) == 16 and small == sorted(small)
  assert all(type(c) is int for c in small)
  assert set(colab.default_classes(1000)) == set(colab.IMAGENET_EXAMPLE_CLASSES)
  assert colab.default_classes(1, count=3) == [0, 0, 0]


def test_metrics_table_prints_plain_floats():
  a = np.zeros((2, S, S, 3), np.uint8)
  b = a.copy()
  b[1] += 10
  table = colab.image_metrics_table(a, b)
  assert all(type(v) is float for v in table["psnr"] + table["ssim"])
  assert "np.float" not in repr(table) and table["psnr"][0] == float("inf")
