"""FID Inception-v3: published key layout, loader, and a TF re-implementation of the 2015 graph."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.models.frozen import inception as inc
from softvq_jax.weights import inception as inc_weights
from softvq_jax.weights import io as wio

# ---------------------------------------------------------------------------------------------
# The pytorch-fid FIDInceptionV3 layout, written out independently from torchvision's Inception3:
# (module, in_channels, out_channels, kernel_h, kernel_w, stride, tf_padding)


def _a(cin, pool):
  return [
    ("branch1x1", cin, 64, 1, 1, 1, "SAME"),
    ("branch5x5_1", cin, 48, 1, 1, 1, "SAME"),
    ("branch5x5_2", 48, 64, 5, 5, 1, "SAME"),
    ("branch3x3dbl_1", cin, 64, 1, 1, 1, "SAME"),
    ("branch3x3dbl_2", 64, 96, 3, 3, 1, "SAME"),
    ("branch3x3dbl_3", 96, 96, 3, 3, 1, "SAME"),
    ("branch_pool", cin, pool, 1, 1, 1, "SAME"),
  ]


def _c(c7):
  return [
    ("branch1x1", 768, 192, 1, 1, 1, "SAME"),
    ("branch7x7_1", 768, c7, 1, 1, 1, "SAME"),
    ("branch7x7_2", c7, c7, 1, 7, 1, "SAME"),
    ("branch7x7_3", c7, 192, 7, 1, 1, "SAME"),
    ("branch7x7dbl_1", 768, c7, 1, 1, 1, "SAME"),
    ("branch7x7dbl_2", c7, c7, 7, 1, 1, "SAME"),
    ("branch7x7dbl_3", c7, c7, 1, 7, 1, "SAME"),
    ("branch7x7dbl_4", c7, c7, 7, 1, 1, "SAME"),
    ("branch7x7dbl_5", c7, 192, 1, 7, 1, "SAME"),
    ("branch_pool", 768, 192, 1, 1, 1, "SAME"),
  ]


def _e(cin):
  return [
    ("branch1x1", cin, 320, 1, 1, 1, "SAME"),
    ("branch3x3_1", cin, 384, 1, 1, 1, "SAME"),
    ("branch3x3_2a", 384, 384, 1, 3, 1, "SAME"),
    ("branch3x3_2b", 384, 384, 3, 1, 1, "SAME"),
    ("branch3x3dbl_1", cin, 448, 1, 1, 1, "SAME"),
    ("branch3x3dbl_2", 448, 384, 3, 3, 1, "SAME"),
    ("branch3x3dbl_3a", 384, 384, 1, 3, 1, "SAME"),
    ("branch3x3dbl_3b", 384, 384, 3, 1, 1, "SAME"),
    ("branch_pool", cin, 192, 1, 1, 1, "SAME"),
  ]


BLOCKS = {
  "Mixed_5b": _a(192, 32),
  "Mixed_5c": _a(256, 64),
  "Mixed_5d": _a(288, 64),
  "Mixed_6a": [
    ("branch3x3", 288, 384, 3, 3, 2, "VALID"),
    ("branch3x3dbl_1", 288, 64, 1, 1, 1, "SAME"),
    ("branch3x3dbl_2", 64, 96, 3, 3, 1, "SAME"),
    ("branch3x3dbl_3", 96, 96, 3, 3, 2, "VALID"),
  ],
  "Mixed_6b": _c(128),
  "Mixed_6c": _c(160),
  "Mixed_6d": _c(160),
  "Mixed_6e": _c(192),
  "Mixed_7a": [
    ("branch3x3_1", 768, 192, 1, 1, 1, "SAME"),
    ("branch3x3_2", 192, 320, 3, 3, 2, "VALID"),
    ("branch7x7x3_1", 768, 192, 1, 1, 1, "SAME"),
    ("branch7x7x3_2", 192, 192, 1, 7, 1, "SAME"),
    ("branch7x7x3_3", 192, 192, 7, 1, 1, "SAME"),
    ("branch7x7x3_4", 192, 192, 3, 3, 2, "VALID"),
  ],
  "Mixed_7b": _e(1280),
  "Mixed_7c": _e(2048),
}
STEM = [
  ("Conv2d_1a_3x3", 3, 32, 3, 3, 2, "VALID"),
  ("Conv2d_2a_3x3", 32, 32, 3, 3, 1, "VALID"),
  ("Conv2d_2b_3x3", 32, 64, 3, 3, 1, "SAME"),
  ("Conv2d_3b_1x1", 64, 80, 1, 1, 1, "VALID"),
  ("Conv2d_4a_3x3", 80, 192, 3, 3, 1, "VALID"),
]
CONVS = {s[0]: s for s in STEM}
CONVS.update({f"{blk}.{s[0]}": s for blk, specs in BLOCKS.items() for s in specs})


def _published_shapes():
  shapes = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}
  for name, (_, cin, cout, kh, kw, _, _) in CONVS.items():
    shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.bn.{leaf}"] = (cout,)
  return shapes


def _random_state_dict(seed=0):
  """Random weights in the published layout that keep activations O(1) through the net."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in _published_shapes().items():
    if key.endswith("conv.weight"):
      fan_in = np.prod(shape[1:])
      sd[key] = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
    elif key.endswith("bn.weight") or key.endswith("running_var"):
      sd[key] = rng.uniform(0.5, 1.5, shape)
    elif key.endswith("bn.bias") or key.endswith("running_mean"):
      sd[key] = rng.normal(0, 0.2, shape)
    else:  # fc
      sd[key] = rng.normal(0, 0.05, shape)
  return {k: v.astype(np.float32) for k, v in sd.items()}


@pytest.fixture(scope="module")
def state_dict():
  return _random_state_dict()


@pytest.fixture(scope="module")
def params(state_dict):
  return inc_weights.params_from_torch_state_dict(state_dict)


# ---------------------------------------------------------------------------------------------
# Layout and loader


def test_param_layout_is_the_published_one():
  shapes = inc.param_shapes()
  sd = inc_weights.torch_state_dict(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes))
  published = _published_shapes()
  assert len(published) == 472
  assert {k: v.shape for k, v in sd.items()} == published
  n = sum(int(np.prod(s)) for s in published.values())
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == n


def test_loader_round_trip_all_keys(tmp_path, state_dict, params):
  path = tmp_path / "pt_inception.safetensors"
  sd = dict(state_dict)
  sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.zeros((), np.int64)  # tolerated if present
  wio.save_safetensors(sd, path)
  loaded = inc_weights.load_inception_params(path)
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  p = loaded["Mixed_6b"]["branch7x7_2"]
  w = state_dict["Mixed_6b.branch7x7_2.conv.weight"]  # (O, I, 1, 7)
  np.testing.assert_array_equal(p["conv"]["kernel"], np.transpose(w, (2, 3, 1, 0)))
  np.testing.assert_array_equal(p["bn"]["var"], state_dict["Mixed_6b.branch7x7_2.bn.running_var"])
  np.testing.assert_array_equal(loaded["fc_kernel"], state_dict["fc.weight"].T)
  back = inc_weights.torch_state_dict(loaded)
  assert back.keys() == state_dict.keys()
  for k, v in state_dict.items():
    np.testing.assert_array_equal(back[k], v)
  npz = tmp_path / "pt_inception.npz"
  np.savez(npz, **state_dict)
  np.testing.assert_array_equal(
    inc_weights.load_inception_params(npz)["fc_bias"], state_dict["fc.bias"]
  )


def test_loader_errors(tmp_path, state_dict):
  with pytest.raises(wio.WeightFileError, match="eval.inception_path"):
    inc_weights.load_inception_params(tmp_path / "missing.safetensors")
  sd = dict(state_dict)
  del sd["Mixed_7c.branch_pool.bn.running_mean"]
  with pytest.raises(ValueError, match="missing 1 keys"):
    inc_weights.params_from_torch_state_dict(sd)
  sd = dict(state_dict)
  sd["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
  with pytest.raises(ValueError, match="unexpected 1 keys"):
    inc_weights.params_from_torch_state_dict(sd)
  sd = dict(state_dict)
  sd["fc.weight"] = np.zeros((1000, 2048), np.float32)
  with pytest.raises(ValueError, match="fc.weight has shape"):
    inc_weights.params_from_torch_state_dict(sd)


# ---------------------------------------------------------------------------------------------
# Known inputs: the TF 2015 graph's ops (TF padding semantics, TF1 resize) vs the Flax module


def _tf_forward(tf, sd, images):
  """The FID graph re-implemented with TF ops: pool_3, mixed_6/conv[..., :7], unbiased logits."""

  def conv(x, name):
    _, _, _, _, _, stride, padding = CONVS[name]
    w = tf.constant(np.transpose(sd[f"{name}.conv.weight"], (2, 3, 1, 0)))
    x = tf.nn.conv2d(x, w, stride, padding)
    bn = {k: tf.constant(sd[f"{name}.bn.{k}"]) for k in ("weight", "bias", "running_mean")}
    var = tf.constant(sd[f"{name}.bn.running_var"])
    x = tf.nn.batch_normalization(
      x, bn["running_mean"], var, bn["bias"], bn["weight"], variance_epsilon=1e-3
    )
    return tf.nn.relu(x)

  def avg(x):  # TF's SAME average pool does not count the padding
    return tf.nn.avg_pool2d(x, 3, 1, "SAME")

  def block_a(x, m):
    b5 = conv(conv(x, f"{m}.branch5x5_1"), f"{m}.branch5x5_2")
    b3 = conv(conv(conv(x, f"{m}.branch3x3dbl_1"), f"{m}.branch3x3dbl_2"), f"{m}.branch3x3dbl_3")
    return tf.concat([conv(x, f"{m}.branch1x1"), b5, b3, conv(avg(x), f"{m}.branch_pool")], -1)

  def block_c(x, m):
    b7 = x
    for i in (1, 2, 3):
      b7 = conv(b7, f"{m}.branch7x7_{i}")
    bd = x
    for i in (1, 2, 3, 4, 5):
      bd = conv(bd, f"{m}.branch7x7dbl_{i}")
    return tf.concat([conv(x, f"{m}.branch1x1"), b7, bd, conv(avg(x), f"{m}.branch_pool")], -1)

  def block_e(x, m, pool):
    b3 = conv(x, f"{m}.branch3x3_1")
    b3 = tf.concat([conv(b3, f"{m}.branch3x3_2a"), conv(b3, f"{m}.branch3x3_2b")], -1)
    bd = conv(conv(x, f"{m}.branch3x3dbl_1"), f"{m}.branch3x3dbl_2")
    bd = tf.concat([conv(bd, f"{m}.branch3x3dbl_3a"), conv(bd, f"{m}.branch3x3dbl_3b")], -1)
    bp = pool(x)
    return tf.concat([conv(x, f"{m}.branch1x1"), b3, bd, conv(bp, f"{m}.branch_pool")], -1)

  maxpool = lambda x: tf.nn.max_pool2d(x, 3, 2, "VALID")
  x = tf.compat.v1.image.resize_bilinear(
    tf.constant(images, tf.float32), [299, 299], align_corners=False, half_pixel_centers=False
  )
  x = (x - 128.0) * 0.0078125
  for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
    x = conv(x, name)
  x = maxpool(x)
  x = maxpool(conv(conv(x, "Conv2d_3b_1x1"), "Conv2d_4a_3x3"))
  for m in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
    x = block_a(x, m)
  m = "Mixed_6a"
  bd = conv(conv(conv(x, f"{m}.branch3x3dbl_1"), f"{m}.branch3x3dbl_2"), f"{m}.branch3x3dbl_3")
  x = tf.concat([conv(x, f"{m}.branch3x3"), bd, maxpool(x)], -1)
  for m in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
    if m == "Mixed_6d":  # mixed_6/conv: the 1x1 branch of Mixed_6d, after its ReLU
      spatial = conv(x, "Mixed_6d.branch1x1")[..., :7]
    x = block_c(x, m)
  m = "Mixed_7a"
  b3 = conv(conv(x, f"{m}.branch3x3_1"), f"{m}.branch3x3_2")
  b7 = x
  for i in (1, 2, 3, 4):
    b7 = conv(b7, f"{m}.branch7x7x3_{i}")
  x = tf.concat([b3, b7, maxpool(x)], -1)
  x = block_e(x, "Mixed_7b", avg)
  x = block_e(x, "Mixed_7c", lambda x: tf.nn.max_pool2d(x, 3, 1, "SAME"))
  pool = tf.reshape(tf.nn.avg_pool2d(x, 8, 1, "VALID"), [-1, 2048])  # pool_3
  logits = tf.matmul(pool, tf.constant(sd["fc.weight"].T))  # ADM: softmax/logits/MatMul only
  spatial = tf.reshape(spatial, [spatial.shape[0], -1])
  return {"pool": pool.numpy(), "spatial": spatial.numpy(), "logits": logits.numpy()}


def _rel_err(a, b):
  return np.abs(a - b).max() / np.abs(b).max()


def test_forward_matches_tf_graph_ops(params, state_dict):
  tf = pytest.importorskip("tensorflow")
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
  apply = jax.jit(inc.apply_features)
  ours = apply(params, images)
  ref = _tf_forward(tf, state_dict, images.astype(np.float32))
  assert ours["pool"].shape == (2, 2048) and ours["spatial"].shape == (2, 2023)
  assert ours["logits"].shape == (2, 1008)
  for k in ("pool", "spatial", "logits"):
    assert np.abs(ref[k]).max() > 1e-2  # not degenerate
    assert _rel_err(np.asarray(ours[k]), ref[k]) < 5e-5, k  # mutants (padding, resize) ~1e-3
  # batch independence and determinism: permuting the batch permutes the outputs
  swapped = apply(params, images[::-1])
  for k in ("pool", "spatial", "logits"):
    np.testing.assert_allclose(np.asarray(swapped[k])[::-1], ours[k], rtol=1e-5, atol=1e-6)


def test_classifier_logits_bias_only_on_request(params):
  pool = np.random.default_rng(3).normal(size=(2, 2048)).astype(np.float32)
  kernel, bias = params["fc_kernel"], params["fc_bias"]
  ref = pool.astype(np.float64) @ kernel.astype(np.float64)
  np.testing.assert_allclose(inc.classifier_logits(pool, kernel), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    inc.classifier_logits(pool, kernel, bias), ref + bias, rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize("size", [(256, 256), (32, 48), (512, 300), (299, 299)])
def test_resize_matches_tf1_resize_bilinear(size):
  tf = pytest.importorskip("tensorflow")
  x = np.random.default_rng(2).integers(0, 256, (1, *size, 3)).astype(np.float32)
  ref = tf.compat.v1.image.resize_bilinear(x, [299, 299], align_corners=False).numpy()
  ours = np.asarray(jax.jit(lambda x: inc.resize_bilinear_tf1(x, (299, 299)))(x))
  np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=0)
  if size == (299, 299):
    np.testing.assert_array_equal(ours, x)


def test_preprocess_normalisation():
  x = np.array([0, 128, 255], np.uint8).reshape(1, 1, 3, 1).repeat(3, -1)
  out = np.asarray(inc.preprocess(jnp.asarray(x), resize=False))
  np.testing.assert_array_equal(out[0, 0, :, 0], [-1.0, 0.0, 127.0 / 128.0])
