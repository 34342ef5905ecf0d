"""DINO-discriminator heads converter: the reference key layout (written out here from
discriminator_dino.py), bitwise round trips, an independent numpy forward of the reference heads
in eval mode, prefix handling, clear errors, and the CLI in both directions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import checkpointing
from softvq_jax.models.discriminators import build_discriminator, init_discriminator
from softvq_jax.models.discriminators.dino_heads import DinoHeads
from softvq_jax.models.frozen import dino
from softvq_jax.weights import dino_disc_from_reference, dino_disc_to_reference
from softvq_jax.weights import io as cio
from softvq_jax.weights import vit as vit_weights
from softvq_jax.weights.dino_disc import (
  reference_num_batches_tracked,
  select_state_dict,
  strip_prefix,
)

TINY = dino.TRUNK_VARIANTS["tiny"][1]  # 32


def key(seed):
  return jax.random.key(seed, impl="rbg")  # threefry's normal() compiles slowly on CPU


def reference_layout(n=5, c=384, k=9, spectral=True):
  """{key: shape} of the reference DinoDisc state dict (nn.Sequential indices, SpectralNorm and
  SyncBatchNorm names), written out independently of the converter."""
  out = {}

  def conv(name, c_out, c_in, ks):
    out[f"{name}.bias"] = (c_out,)
    out[f"{name}.weight_orig" if spectral else f"{name}.weight"] = (c_out, c_in, ks)
    if spectral:
      out[f"{name}.weight_u"] = (c_out,)
      out[f"{name}.weight_v"] = (c_in * ks,)

  def bn(name):
    for s in ("weight", "bias", "running_mean", "running_var"):
      out[f"{name}.{s}"] = (c,)
    out[f"{name}.num_batches_tracked"] = ()

  for i in range(n):
    conv(f"heads.{i}.0.0", c, c, 1)  # make_block(k=1): Sequential(conv, norm, lrelu)
    bn(f"heads.{i}.0.1")
    conv(f"heads.{i}.1.fn.0", c, c, k)  # ResidualBlock(make_block(k=9)).fn
    bn(f"heads.{i}.1.fn.1")
    conv(f"heads.{i}.2", 1, c, 1)  # final conv to 1 channel
  return out


def random_reference(c=TINY, n=5, k=9, seed=0, nbt=7):
  """A random reference state dict. u / v are one power iteration from a random start (as torch
  leaves them after a train step: sigma is well away from 0 but not the exact top singular
  value, so recomputing u / v instead of using the stored ones would show); var > 0."""
  rs = np.random.RandomState(seed)
  sd = {}
  unit = lambda x: (x / np.linalg.norm(x)).astype(np.float32)
  for name, shape in reference_layout(n, c, k).items():
    if name.endswith("num_batches_tracked"):
      sd[name] = np.asarray(nbt, np.int64)
    elif name.endswith("running_var"):
      sd[name] = rs.uniform(0.5, 2.0, shape).astype(np.float32)
    elif name.endswith("weight_orig"):
      w = (0.2 * rs.standard_normal(shape)).astype(np.float32)
      mat = w.reshape(shape[0], -1).astype(np.float64)
      v = unit(mat.T @ rs.standard_normal(shape[0]))
      sd[name], sd[name[: -len("orig")] + "v"] = w, v
      sd[name[: -len("orig")] + "u"] = unit(mat @ v)
    elif not name.endswith(("weight_u", "weight_v")):
      sd[name] = rs.standard_normal(shape).astype(np.float32)
  return {name: sd[name] for name in reference_layout(n, c, k)}


@pytest.fixture(scope="module")
def tiny_disc():
  """(params, state) of a freshly initialised discriminator on the 'tiny' DINO trunk."""
  depth, width, heads = dino.TRUNK_VARIANTS["tiny"]
  module = build_discriminator(
    "dino", trunk_fn=dino.trunk_fn(depth=depth, width=width, num_heads=heads)
  )
  trunk = vit_weights.random_like(dino.abstract_params(depth, width, heads), key(1))
  x = jnp.zeros((1, 224, 224, 3), jnp.float32)
  return init_discriminator(module, key(0), x, trunk)


# ----------------------------------------------------------------------------- (a) layout
def test_full_size_layout_matches_reference():
  """The 384-wide discriminator (ViT-S/16 trunk) -> exactly the reference keys and shapes."""
  module = build_discriminator("dino", trunk_fn=dino.trunk_fn())
  trunk = dino.abstract_params()
  x = jnp.zeros((1, 224, 224, 3), jnp.float32)
  shapes = jax.eval_shape(lambda t: init_discriminator(module, key(0), x, t), trunk)
  params, state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  assert set(state) == {"spectral", "batch_stats"}
  sd = dino_disc_to_reference(params, state, num_batches_tracked=3)
  want = reference_layout()
  assert set(sd) == set(want)
  for k, shape in want.items():
    assert sd[k].shape == shape, k
    assert sd[k].dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float32), k
  assert int(sd["heads.4.1.fn.1.num_batches_tracked"]) == 3
  p, s = dino_disc_from_reference(sd)  # the reference defaults: 384 wide, 5 heads, k 9
  jax.tree.map(np.testing.assert_array_equal, (p, s), (params, state))


def test_tiny_layout_and_spectral_off():
  sd = dino_disc_to_reference(*jax.tree.map(np.asarray, _tiny_no_sn()))
  want = reference_layout(2, 8, 3, spectral=False)
  assert {k: v.shape for k, v in sd.items()} == want
  params, state = dino_disc_from_reference(sd, width=8, num_heads=2, kernel_size=3)
  assert set(state) == {"batch_stats"}  # spectral norm off: plain `weight`, no u / v
  np.testing.assert_array_equal(
    params["heads"]["heads_1"]["res_conv"]["kernel"],
    cio.conv_kernel(sd["heads.1.1.fn.0.weight"]),
  )


def _tiny_no_sn():
  heads = DinoHeads(num_heads=2, kernel_size=3, spectral=False)
  variables = heads.init(key(3), [jnp.ones((2, 6, 8))] * 2)
  variables = {c: {"heads": v} for c, v in variables.items()}
  return variables.pop("params"), variables


# ----------------------------------------------------------------------------- (b) round trips
def test_round_trip_flax_reference_flax_is_bitwise(tiny_disc):
  params, state = tiny_disc
  sd = dino_disc_to_reference(params, state)
  assert {k: v.shape for k, v in sd.items()} == reference_layout(c=TINY)
  # weight_orig is the unnormalised kernel, in torch layout
  np.testing.assert_array_equal(
    sd["heads.3.1.fn.0.weight_orig"],
    cio.conv_weight(params["heads"]["heads_3"]["res_conv"]["kernel"]),
  )
  np.testing.assert_array_equal(
    sd["heads.0.2.weight_v"], state["spectral"]["heads"]["heads_0"]["out_conv"]["v"]
  )
  p2, s2 = dino_disc_from_reference(sd, width=TINY)
  assert jax.tree.structure(p2) == jax.tree.structure(params)
  assert jax.tree.structure(s2) == jax.tree.structure(state)
  jax.tree.map(np.testing.assert_array_equal, (params, state), (p2, s2))
  assert all(
    jax.tree.leaves(jax.tree.map(lambda a, b: a.dtype == b.dtype, (params, state), (p2, s2)))
  )


def test_round_trip_reference_flax_reference_is_bitwise():
  sd = random_reference(nbt=11)
  params, state = dino_disc_from_reference(sd, width=TINY)
  n = reference_num_batches_tracked(sd)
  assert n == 11
  back = dino_disc_to_reference(params, state, num_batches_tracked=n)
  assert set(back) == set(sd)
  for k, v in sd.items():
    assert back[k].dtype == v.dtype, k
    np.testing.assert_array_equal(back[k], v, err_msg=k)


# ----------------------------------------------------------------------------- (c) forward
def np_sn_weight(sd, name):
  """torch spectral_norm in eval mode: weight_orig / (u . W v) with the stored u, v."""
  w = sd[f"{name}.weight_orig"].astype(np.float64)
  u, v = sd[f"{name}.weight_u"].astype(np.float64), sd[f"{name}.weight_v"].astype(np.float64)
  return w / (u @ (w.reshape(w.shape[0], -1) @ v))


def np_conv1d_circular(x, w, b):
  """x (B, C, T) as torch Conv1d(padding=k // 2, padding_mode='circular'); w (O, I, K)."""
  k = w.shape[-1]
  xp = np.concatenate([x[..., x.shape[-1] - k // 2 :], x, x[..., : k // 2]], -1) if k > 1 else x
  t = x.shape[-1]
  return (
    sum(np.einsum("oi,bit->bot", w[:, :, j], xp[..., j : j + t]) for j in range(k))
    + b[None, :, None]
  )


def np_bn_eval(x, sd, name, eps=1e-6):
  g = lambda s: sd[f"{name}.{s}"].astype(np.float64)[None, :, None]
  return (x - g("running_mean")) / np.sqrt(g("running_var") + eps) * g("weight") + g("bias")


def np_head(sd, i, x_bct):
  """One reference head (torch NCT layout), eval mode: x (B, C, T) -> (B, T)."""
  lrelu = lambda h: np.where(h >= 0, h, 0.2 * h)

  def block(h, name):
    h = np_conv1d_circular(h, np_sn_weight(sd, f"{name}.0"), sd[f"{name}.0.bias"])
    return lrelu(np_bn_eval(h, sd, f"{name}.1"))

  h = block(x_bct, f"heads.{i}.0")
  h = (block(h, f"heads.{i}.1.fn") + h) / np.sqrt(2.0)
  out = np_conv1d_circular(h, np_sn_weight(sd, f"heads.{i}.2"), sd[f"heads.{i}.2.bias"])
  return out[:, 0]


def test_forward_matches_numpy_reference_head():
  sd = random_reference(seed=5)
  params, state = dino_disc_from_reference(sd, width=TINY)
  rs = np.random.RandomState(1)
  feats = [rs.standard_normal((2, 196, TINY)).astype(np.float32) for _ in range(5)]
  heads = DinoHeads()
  variables = {"params": params["heads"], **{c: v["heads"] for c, v in state.items()}}
  ours = np.asarray(heads.apply(variables, [jnp.asarray(f) for f in feats], train=False))
  assert ours.shape == (2, 5 * 196)
  for i in range(5):
    want = np_head(sd, i, feats[i].astype(np.float64).transpose(0, 2, 1))
    np.testing.assert_allclose(ours[:, i * 196 : (i + 1) * 196], want, rtol=1e-5, atol=1e-5)
  # update_stats=False leaves the converted statistics untouched
  _, new = heads.apply(
    variables, feats, train=False, update_stats=False, mutable=["spectral", "batch_stats"]
  )
  jax.tree.map(np.testing.assert_array_equal, dict(new), {c: v["heads"] for c, v in state.items()})


# ----------------------------------------------------------------------------- prefixes
def test_wrapper_prefixes_are_stripped():
  sd = random_reference()
  want = dino_disc_from_reference(sd, width=TINY)
  for prefix in ("discriminator.", "module.discriminator.", "_orig_mod."):
    wrapped = {prefix + k: v for k, v in sd.items()}
    wrapped["perceptual_loss.net.lin0.model.1.weight"] = np.zeros((1, 64, 1, 1), np.float32)
    got = dino_disc_from_reference(wrapped, width=TINY)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert reference_num_batches_tracked(wrapped) == 7
  explicit = {"discriminator." + k: v for k, v in sd.items()} | {"dino_proxy.0.x": np.zeros(1)}
  assert set(strip_prefix(explicit, "discriminator.")) == set(sd)
  with pytest.raises(ValueError, match="several prefixes.*discriminator"):
    strip_prefix(sd | {"discriminator." + k: v for k, v in sd.items()})


def test_select_state_dict_from_training_checkpoint():
  sd = random_reference()
  ckpt = {"model": {"encoder.x": 1}, "discriminator": sd, "optimizer_disc": {}, "steps": 10}
  assert select_state_dict(ckpt) is sd
  assert select_state_dict({"state_dict": sd}) is sd and select_state_dict(sd) is sd


# ----------------------------------------------------------------------------- (d) errors
def test_missing_and_unknown_keys_are_named():
  sd = random_reference()
  del sd["heads.2.1.fn.0.weight_u"], sd["heads.0.0.1.num_batches_tracked"]
  sd["heads.5.2.bias"] = np.zeros(1, np.float32)
  with pytest.raises(KeyError) as e:
    dino_disc_from_reference(sd, width=TINY)
  msg = str(e.value)
  assert "missing keys" in msg and "heads.2.1.fn.0.weight_u" in msg
  assert "heads.0.0.1.num_batches_tracked" in msg
  assert "unknown keys" in msg and "heads.5.2.bias" in msg


def test_wrong_shapes_are_named():
  sd = random_reference()
  sd["heads.1.1.fn.0.weight_orig"] = np.zeros((TINY, TINY, 7), np.float32)
  sd["heads.4.0.1.running_var"] = np.ones((TINY + 1,), np.float32)
  with pytest.raises(ValueError, match="shape mismatch") as e:
    dino_disc_from_reference(sd, width=TINY)
  msg = str(e.value)
  assert f"heads.1.1.fn.0.weight_orig (32, 32, 7) needs ({TINY}, {TINY}, 9)" in msg
  assert "heads.4.0.1.running_var (33,) needs (32,)" in msg
  with pytest.raises(ValueError, match=r"heads.0.0.0.bias \(32,\) needs \(384,\)"):
    dino_disc_from_reference(random_reference())  # a 32-wide dict is not the 384-wide reference


def test_to_reference_rejects_foreign_trees(tiny_disc):
  params, state = tiny_disc
  no_mean = jax.tree.map(lambda a: a, state)  # fresh containers
  del no_mean["batch_stats"]["heads"]["heads_0"]["block_norm"]["mean"]
  with pytest.raises(KeyError, match="missing.*batch_stats/heads/heads_0/block_norm/mean"):
    dino_disc_to_reference(params, no_mean)
  bad_v = jax.tree.map(lambda a: a, state)
  bad_v["spectral"]["heads"]["heads_2"]["res_conv"]["v"] = np.zeros(5, np.float32)
  with pytest.raises(ValueError, match=r"spectral/heads/heads_2/res_conv/v: got \(5,\)"):
    dino_disc_to_reference(params, bad_v)
  with pytest.raises(KeyError, match="unexpected.*ema"):
    dino_disc_to_reference(params, {**state, "ema": {"x": np.zeros(1)}})


# ----------------------------------------------------------------------------- CLI
def test_cli_both_directions(tmp_path):
  from softvq_jax.cli.convert import main

  sd = random_reference(nbt=42)
  weights = tmp_path / "ref" / "vq_loss.safetensors"
  extra = {"perceptual_loss.scaling_layer.shift": np.zeros((1, 3, 1, 1), np.float32)}
  cio.save_safetensors({"discriminator." + k: v for k, v in sd.items()} | extra, weights)
  out = tmp_path / "disc"
  main(["dino-disc", "--weights", str(weights), "--out", str(out), "--variant", "tiny"])
  tree, config = checkpointing.load_model(out)
  assert set(tree) == {"params", "stats"} and config["num_batches_tracked"] == 42
  assert config["model"]["width"] == TINY and config["model"]["spectral"]
  want_p, want_s = dino_disc_from_reference(sd, width=TINY)
  jax.tree.map(np.testing.assert_array_equal, (tree["params"], tree["stats"]), (want_p, want_s))

  back_file = tmp_path / "back" / "disc.safetensors"
  main(["dino-disc-to-reference", "--checkpoint", str(out), "--out", str(back_file)])
  back = cio.load_state_dict(back_file)
  assert set(back) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
    assert back[k].dtype == v.dtype, k
  with pytest.raises(ValueError, match="bias"):  # the ViT-S width needs a 384-wide dict
    main(["dino-disc", "--weights", str(weights), "--out", str(tmp_path / "s")])
  with pytest.raises(cio.WeightFileError, match="nope.safetensors.*--weights"):
    main(["dino-disc", "--weights", str(tmp_path / "nope.safetensors"), "--out", str(out)])


def test_tokenizer_training_starts_from_converted_heads(tmp_path):
  """loss.disc.init_from: a fresh run's discriminator params and statistics are the converted
  reference heads; heads of another size are refused by name; a missing dir fails in validate."""
  from test_tokenizer_trainer import tiny_config

  from softvq_jax import sharding
  from softvq_jax.cli.convert import main
  from softvq_jax.config.validate import validate
  from softvq_jax.training.tokenizer import TokenizerTask
  from softvq_jax.weights.io import WeightFileError

  weights = tmp_path / "disc.safetensors"
  cio.save_safetensors(random_reference(seed=3), weights)
  out = tmp_path / "heads"
  main(["dino-disc", "--weights", str(weights), "--out", str(out), "--variant", "tiny"])
  gan = {"loss.random_init": True, "loss.disc.name": "dino", "loss.disc.dino_variant": "tiny"}
  config = tiny_config(**gan, **{"loss.disc.weight": 0.2, "loss.disc.init_from": str(out)})
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  task = TokenizerTask(config, mesh, total_steps=4, warmup_steps=2)
  fresh = jax.jit(task.init_state)(jax.random.key(0))
  state = task.post_init(fresh)
  tree, _ = checkpointing.load_model(out)
  got = jax.device_get({k: state.extra["disc"][k] for k in ("params", "stats")})
  jax.tree.map(np.testing.assert_array_equal, got, tree)
  before = jax.device_get(fresh.extra["disc"]["params"])
  assert not np.array_equal(
    before["heads"]["heads_0"]["out_conv"]["bias"],
    got["params"]["heads"]["heads_0"]["out_conv"]["bias"],
  )
  jax.tree.map(np.testing.assert_array_equal, state.params, fresh.params)  # the tokenizer as is

  small = tmp_path / "small"
  cio.save_safetensors(random_reference(c=8, seed=4), tmp_path / "small.safetensors")
  sd_small = cio.load_state_dict(tmp_path / "small.safetensors")
  params, stats = dino_disc_from_reference(sd_small, width=8)
  checkpointing.save_model(small, {"params": params, "stats": stats}, {"model": {"kind": "x"}})
  config.loss.disc.init_from = str(small)
  with pytest.raises(ValueError, match="loss.disc.init_from.*does not match"):
    TokenizerTask(config, mesh, total_steps=4, warmup_steps=2).post_init(fresh)
  config.loss.disc.init_from = str(tmp_path / "nope")
  with pytest.raises(WeightFileError, match="loss.disc.init_from"):
    validate(config)
