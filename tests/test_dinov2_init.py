"""DINOv2 -> tokenizer encoder initialisation on a random state dict in the timm key layout."""

import math

import jax
import numpy as np
import pytest

from softvq_jax.models.factory import abstract_params, build_tokenizer
from softvq_jax.weights import init_encoder_from_dinov2, resample

W, DEPTH = 64, 1


def _tokenizer(patch, image):
  vit = dict(variant="mu", patch_size=patch, depth=DEPTH)
  m = dict(
    name="softvq",
    image_size=image,
    encoder=dict(vit),
    decoder=dict(vit),
    num_latent_tokens=4,
    codebook_embed_dim=4,
  )
  q = dict(name="softvq", codebook_size=8, num_codebooks=2)
  model = build_tokenizer(m, q)
  rs = np.random.RandomState(0)
  return jax.tree.map(lambda s: rs.randn(*s.shape).astype(np.float32), abstract_params(model))


def dinov2_state_dict(grid, patch=14, cls_slot=True, seed=1):
  """Random weights with the exact key/shape layout of timm's vit_*_patch14_dinov2."""
  rs = np.random.RandomState(seed)
  r = lambda *s: rs.randn(*s).astype(np.float32)
  sd = {
    "cls_token": r(1, 1, W),
    "pos_embed": r(1, int(cls_slot) + grid * grid, W),
    "mask_token": r(1, W),
    "patch_embed.proj.weight": r(W, 3, patch, patch),
    "patch_embed.proj.bias": r(W),
    "norm.weight": r(W),
    "norm.bias": r(W),
  }
  for i in range(DEPTH):
    b = f"blocks.{i}."
    for ln in ("norm1", "norm2"):
      sd[b + ln + ".weight"], sd[b + ln + ".bias"] = r(W), r(W)
    for name, (o, i_) in {
      "attn.qkv": (3 * W, W),
      "attn.proj": (W, W),
      "mlp.fc1": (4 * W, W),
      "mlp.fc2": (W, 4 * W),
    }.items():
      sd[b + name + ".weight"], sd[b + name + ".bias"] = r(o, i_), r(o)
    sd[b + "ls1.gamma"], sd[b + "ls2.gamma"] = r(W), r(W)
  return sd


def test_mapping_without_resampling():
  params = _tokenizer(14, 28)  # patch 14, 2x2 grid: nothing to resample
  sd = dinov2_state_dict(2)
  new = init_encoder_from_dinov2(params, sd, patch_size=14, image_size=28)
  e = new["encoder"]
  np.testing.assert_array_equal(e["cls_token"], sd["cls_token"])
  np.testing.assert_array_equal(e["pos_embed"], sd["pos_embed"])
  np.testing.assert_array_equal(
    e["patch_embed"]["proj"]["kernel"], sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0)
  )
  b = e["blocks_0"]
  np.testing.assert_array_equal(b["attn"]["qkv"]["kernel"], sd["blocks.0.attn.qkv.weight"].T)
  np.testing.assert_array_equal(b["mlp"]["fc2"]["bias"], sd["blocks.0.mlp.fc2.bias"])
  np.testing.assert_array_equal(b["ls2"]["gamma"], sd["blocks.0.ls2.gamma"])
  np.testing.assert_array_equal(b["norm1"]["scale"], sd["blocks.0.norm1.weight"])
  np.testing.assert_array_equal(e["norm"]["bias"], sd["norm.bias"])
  # everything else keeps its init, and the input tree is not modified
  for k in ("latent_tokens", "latent_pos_embed"):
    np.testing.assert_array_equal(e[k], params["encoder"][k])
  for k in ("decoder", "quantize", "quant_conv", "post_quant_conv"):
    jax.tree.map(np.testing.assert_array_equal, new[k], params[k])
  assert not np.array_equal(params["encoder"]["cls_token"], e["cls_token"])
  assert jax.tree.map(np.shape, new) == jax.tree.map(np.shape, params)


def test_pos_embed_without_cls_slot_keeps_ours():
  params = _tokenizer(14, 28)
  sd = dinov2_state_dict(2, cls_slot=False)
  e = init_encoder_from_dinov2(params, sd, patch_size=14, image_size=28)["encoder"]
  np.testing.assert_array_equal(e["pos_embed"][:, :1], params["encoder"]["pos_embed"][:, :1])
  np.testing.assert_array_equal(e["pos_embed"][:, 1:], sd["pos_embed"])


def test_errors_name_the_problem():
  params = _tokenizer(14, 28)
  sd = dinov2_state_dict(2)
  del sd["blocks.0.mlp.fc1.bias"]
  sd["blocks.1.ls1.gamma"] = np.zeros(W, np.float32)  # a deeper checkpoint
  with pytest.raises(KeyError, match=r"blocks\.0\.mlp\.fc1\.bias.*blocks\.1\.ls1\.gamma"):
    init_encoder_from_dinov2(params, sd, patch_size=14, image_size=28)
  sd = dinov2_state_dict(2)
  sd["cls_token"] = np.zeros((1, 1, 32), np.float32)
  with pytest.raises(ValueError, match="width"):
    init_encoder_from_dinov2(params, sd, patch_size=14, image_size=28)


def test_resampling_patch_14_to_16_and_grid_37_to_2():
  params = _tokenizer(16, 32)
  sd = dinov2_state_dict(37)
  sd["pos_embed"][:, 1:] = 0.25  # a constant grid stays constant under bicubic resampling
  e = init_encoder_from_dinov2(params, sd, patch_size=16, image_size=32)["encoder"]
  assert e["patch_embed"]["proj"]["kernel"].shape == (16, 16, 3, W)
  assert e["pos_embed"].shape == (1, 1 + 4, W)
  np.testing.assert_array_equal(e["pos_embed"][:, 0], sd["pos_embed"][:, 0])  # cls slot kept
  np.testing.assert_allclose(e["pos_embed"][:, 1:], 0.25, atol=1e-5)
  # FlexiViT property: a 14x14 patch upsampled (timm's bicubic) to 16x16 and embedded with the
  # new kernel gives the old embedding of the 14x14 patch.
  x = np.random.RandomState(2).randn(14, 14, 3).astype(np.float32)
  up = resample.resize_2d(x, (16, 16))
  old = np.einsum("hwc,chwo->o", x, sd["patch_embed.proj.weight"].transpose(1, 2, 3, 0))
  new = np.einsum("hwc,hwco->o", up, np.asarray(e["patch_embed"]["proj"]["kernel"]))
  np.testing.assert_allclose(new, old, rtol=1e-3, atol=1e-3 * math.sqrt(14 * 14 * 3))
