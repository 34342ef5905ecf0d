"""SiT/DiT model, CFG, DiT diffusion formulas and the SiT converter (layout, round trip, CLI).

Formulas are checked against independent numpy computations (float64, tol 1e-5 relative in
float32); parameter counts with `jax.eval_shape` (no allocation).
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax import checkpointing
from softvq_jax.cli.convert import main as convert_main
from softvq_jax.models.sit import DiT, SiT, build_generator
from softvq_jax.objectives import diffusion as D
from softvq_jax.sampling import cfg as cfg_lib
from softvq_jax.sampling.diffusion import diffusion_sample
from softvq_jax.sampling.ode import ode_sample
from softvq_jax.sampling.sde import sde_sample
from softvq_jax.weights import io as cio
from softvq_jax.weights import sit_from_reference
from softvq_jax.weights.sit import (
  generator_from_config,
  key_map,
  sit_to_reference,
)


def _count(model, x_shape):
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros(x_shape), jnp.zeros((1,)), jnp.zeros((1,), int))
  )
  return sum(math.prod(a.shape) for a in jax.tree.leaves(shapes["params"])), shapes["params"]


def test_sit_xl1_parameter_count_and_reference_layout(fixtures_dir):
  model = build_generator("sit", "XL", input_size=64, in_channels=32)
  n, params = _count(model, (1, 64, 32))
  ref = {}
  for line in (fixtures_dir / "sit_xl1_softvq64_state_dict_keys.txt").read_text().splitlines():
    k, s = line.split("\t")
    ref[k] = tuple(json.loads(s.replace("(", "[").replace(")", "]").replace(",]", "]")))
  pos = math.prod(ref["pos_embed"])  # a fixed buffer in the reference, computed on the fly here
  assert n + pos == sum(math.prod(s) for s in ref.values()) == 674_926_880
  assert round(n / 1e6, 1) == 674.9
  # Every reference key maps to one of our params with the transposed shape.
  flat = {
    tuple(p.key for p in path): a.shape for path, a in jax.tree_util.tree_leaves_with_path(params)
  }
  ours = {}
  for path, key, kind in key_map(model):
    s = flat[path]
    ours[key] = s[::-1] if kind == "linear" else s
  ours["pos_embed"] = (1, 64, 1152)
  assert ours == ref


def test_sit_xl2_baseline_and_dit_shapes():
  sit2 = build_generator("sit", "XL", input_size=32, in_channels=4, patch_size=2)
  n, _ = _count(sit2, (1, 32, 32, 4))
  assert 670e6 < n < 680e6  # SiT-XL/2 is 675M in the SiT paper
  dit = build_generator("dit", "mu", input_size=8, in_channels=4)
  tiny2 = SiT(input_size=8, in_channels=4, patch_size=2, hidden_size=32, depth=1, num_heads=2)

  @jax.jit
  def run():
    x = jnp.ones((2, 8, 4))
    params = dit.init(jax.random.key(0), x, jnp.zeros((2,)), jnp.zeros((2,), int))["params"]
    a = dit.apply({"params": params}, x, jnp.array([3, 999]), jnp.array([1, 1000]))
    x2 = jnp.ones((2, 8, 8, 4))
    p = tiny2.init(jax.random.key(0), x2, jnp.zeros((2,)), jnp.zeros((2,), int))
    return a, tiny2.apply(p, x2, jnp.zeros((2,)), jnp.zeros((2,), int))

  a, b = run()
  assert a.shape == (2, 8, 8) and b.shape == (2, 8, 8, 4)


def test_zero_init_and_label_dropout():
  model = build_generator("sit", "mu", input_size=4, in_channels=2, num_classes=10)
  x = jax.random.normal(jax.random.key(1), (64, 4, 2))
  y = jnp.arange(64) % 10
  params = model.init(jax.random.key(0), x, jnp.zeros((64,)), y)["params"]
  out = model.apply({"params": params}, x, jnp.full((64,), 0.5), y)
  assert float(jnp.abs(out).max()) == 0.0  # adaLN-Zero + zero final layer
  assert params["y_embedder"]["embedding_table"].shape == (11, 64)
  emb = lambda **kw: model.apply(
    {"params": params}, jnp.zeros((64,)), y, method=model.embed_conditions, **kw
  )[1]
  null = params["y_embedder"]["embedding_table"][10]
  dropped = emb(train=True, rngs={"label_dropout": jax.random.key(3)})
  frac = float(jnp.mean(jnp.all(dropped == null, axis=-1)))
  assert 0.0 < frac < 0.35  # p = 0.1 over 64 labels
  forced = emb(force_drop_ids=jnp.arange(64) % 2)
  assert bool(jnp.all(forced[1::2] == null)) and not bool(
    jnp.any(jnp.all(forced[0::2] == null, -1))
  )
  np.testing.assert_array_equal(emb(), params["y_embedder"]["embedding_table"][y])


def _recording_model(calls):
  """A linear 'velocity' v = a x + b t + c y, recording the batch size of every call."""

  def fn(x, t, y):
    calls.append(x.shape[0])
    return 0.3 * x + 0.1 * t[:, None, None] + 0.01 * y[:, None, None].astype(x.dtype)

  return fn


def _numpy_euler(x, y, steps, scale, interval, null=1000):
  t = np.linspace(1, 0, steps + 1)
  v = lambda x, tc, yy: 0.3 * x + 0.1 * tc + 0.01 * yy[:, None, None]
  for tc, tn in zip(t[:-1], t[1:], strict=True):
    d = v(x, tc, y)
    if scale > 1 and interval[0] <= tc <= interval[1]:
      du = v(x, tc, np.full_like(y, null))
      d = du + scale * (d - du)
    x = x + (tn - tc) * d
  return x


def test_cfg_doubles_once_and_respects_interval():
  x = np.random.default_rng(0).normal(size=(3, 4, 2)).astype(np.float32)
  y = np.array([1, 2, 3])
  calls = []
  out = ode_sample(
    _recording_model(calls),
    jnp.asarray(x),
    jnp.asarray(y),
    steps=10,
    cfg_scale=4.0,
    cfg_interval=(0.0, 0.45),
  )
  # Traced once per segment: unguided steps (t > 0.45) see B, guided steps see 2B, never 4B.
  assert sorted(set(calls)) == [3, 6]
  want = _numpy_euler(x.astype(np.float64), y, 10, 4.0, (0.0, 0.45))
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  no_interval = _numpy_euler(x.astype(np.float64), y, 10, 4.0, (0.0, 1.0))
  assert np.abs(no_interval - want).max() > 1e-3  # the interval changes the result
  calls.clear()
  ode_sample(_recording_model(calls), jnp.asarray(x), jnp.asarray(y), steps=4, cfg_scale=1.0)
  assert calls == [3]
  mask = cfg_lib.guidance_mask(np.linspace(1, 0, 11)[:-1], 1.75, (0.0, 0.7))
  np.testing.assert_array_equal(mask, np.linspace(1, 0, 11)[:-1] <= 0.7)
  assert cfg_lib.segments([0, 0, 1, 1, 1, 0]) == [(0, 2, 0), (2, 5, 1), (5, 6, 0)]


def test_sde_key_noise_and_validation():
  fn = _recording_model([])
  x = jnp.ones((2, 4, 2))
  y = jnp.array([0, 1])
  a = sde_sample(fn, x, y, steps=6, key=jax.random.key(0))
  b = sde_sample(fn, x, y, steps=6, key=jax.random.key(0))
  c = sde_sample(fn, x, y, steps=6, key=jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).max()) > 1e-3
  with pytest.raises(ValueError, match="exactly one"):
    sde_sample(fn, x, y, steps=6)
  with pytest.raises(ValueError, match="noise must have shape"):
    sde_sample(fn, x, y, steps=6, noise=jnp.zeros((6, 2, 4, 2)))


# ---- DiT diffusion vs numpy ----


def _np_cosine_betas(n):
  ab = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
  return np.minimum(1 - ab(np.arange(1, n + 1) / n) / ab(np.arange(n) / n), 0.999)


def test_diffusion_schedules_and_respacing():
  d = D.GaussianDiffusion.create("cosine", 1000)
  np.testing.assert_allclose(d.betas, _np_cosine_betas(1000), rtol=1e-12)
  lin = D.GaussianDiffusion.create("linear", 1000)
  np.testing.assert_allclose(lin.betas[[0, -1]], [1e-4, 0.02])
  sp = D.GaussianDiffusion.create("cosine", 1000, "250")
  assert sp.num_steps == 250 and sp.timestep_map[0] == 0 and sp.timestep_map[-1] == 999
  # Respaced alphas_cumprod equal the base ones at the kept steps.
  np.testing.assert_allclose(sp.alphas_cumprod, d.alphas_cumprod[sp.timestep_map], rtol=1e-10)
  assert D.space_timesteps(10, "3") == [0, 4, 9]


def test_diffusion_formulas_vs_numpy():
  d = D.GaussianDiffusion.create("linear", 1000)
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, (3, 5, 2))
  noise = rng.normal(size=x0.shape)
  t = np.array([0, 10, 999])
  b = d.betas
  acp = np.cumprod(1 - b)
  acp_prev = np.append(1, acp[:-1])
  e = lambda a: a[t][:, None, None]
  xt = np.sqrt(e(acp)) * x0 + np.sqrt(1 - e(acp)) * noise
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  np.testing.assert_allclose(
    D.q_sample(d, f32(x0), jnp.asarray(t), f32(noise)), xt, rtol=1e-5, atol=1e-5
  )
  mean = (
    e(b * np.sqrt(acp_prev) / (1 - acp)) * x0 + e((1 - acp_prev) * np.sqrt(1 - b) / (1 - acp)) * xt
  )
  var = b * (1 - acp_prev) / (1 - acp)
  m, v, lv = D.q_posterior_mean_variance(d, f32(x0), f32(xt), jnp.asarray(t))
  np.testing.assert_allclose(m, mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(v[:, 0, 0], var[t], rtol=1e-5, atol=1e-12)
  log_clip = np.log(np.append(var[1], var[1:]))
  np.testing.assert_allclose(lv[:, 0, 0], log_clip[t], rtol=1e-5)
  # VB term for a given model output [eps | v]: KL for t > 0, decoder NLL at t = 0.
  eps_hat = rng.normal(size=x0.shape)
  vv = rng.uniform(-1, 1, x0.shape)
  logvar = (vv + 1) / 2 * np.log(e(b)) + (1 - (vv + 1) / 2) * e(log_clip)
  x0_hat = np.sqrt(1 / e(acp)) * xt - np.sqrt(1 / e(acp) - 1) * eps_hat
  pmean = (
    e(b * np.sqrt(acp_prev) / (1 - acp)) * x0_hat
    + e((1 - acp_prev) * np.sqrt(1 - b) / (1 - acp)) * xt
  )
  kl = 0.5 * (
    -1 + logvar - e(log_clip) + np.exp(e(log_clip) - logvar) + (mean - pmean) ** 2 * np.exp(-logvar)
  )
  kl = kl.mean(axis=(1, 2)) / np.log(2)
  s = np.exp(-0.5 * logvar)
  cdf = lambda z: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))  # ADM's approx
  nll = -np.log(
    np.clip(cdf(s * (x0 - pmean + 1 / 255)) - cdf(s * (x0 - pmean - 1 / 255)), 1e-12, None)
  )
  nll = nll.mean(axis=(1, 2)) / np.log(2)
  out = np.concatenate([eps_hat, vv], -1)
  vb = D.vb_terms_bpd(d, f32(out), f32(x0), f32(xt), jnp.asarray(t))
  np.testing.assert_allclose(vb[1:], kl[1:], rtol=1e-3)
  np.testing.assert_allclose(vb[0], nll[0], rtol=1e-3)
  losses = D.training_losses(d, lambda x, s: f32(out), f32(x0), jnp.asarray(t), f32(noise))
  np.testing.assert_allclose(losses["mse"], ((noise - eps_hat) ** 2).mean(axis=(1, 2)), rtol=1e-5)
  np.testing.assert_allclose(losses["loss"], losses["mse"] + losses["vb"], rtol=1e-6)


def test_dit_sampler_guides_all_channels():
  d = D.GaussianDiffusion.create("cosine", 1000, "5")
  calls = []

  def fn(x, t, y):
    calls.append(x.shape[0])
    eps = 0.5 * x + 0.1 * y[:, None, None].astype(x.dtype) / 1000
    return jnp.concatenate([eps, jnp.zeros_like(x)], -1)

  x = jax.random.normal(jax.random.key(0), (2, 3, 4))
  noise = jax.random.normal(jax.random.key(1), (5, 2, 3, 4))
  y = jnp.array([5, 500])
  out = diffusion_sample(d, fn, x, y, cfg_scale=3.0, noise=noise)
  assert sorted(set(calls)) == [4]
  # numpy ancestral loop with guidance on all 4 channels
  xn, nn_ = np.asarray(x, np.float64), np.asarray(noise, np.float64)
  for i, t in enumerate(range(4, -1, -1)):
    ec = 0.5 * xn + 0.1 * np.asarray(y)[:, None, None] / 1000
    eu = 0.5 * xn + 0.1 * 1000 / 1000
    eps = eu + 3.0 * (ec - eu)
    acp, b = d.alphas_cumprod[t], d.betas[t]
    x0 = np.sqrt(1 / acp) * xn - np.sqrt(1 / acp - 1) * eps
    mean = d.posterior_mean_coef1[t] * x0 + d.posterior_mean_coef2[t] * xn
    logvar = 0.5 * np.log(b) + 0.5 * d.posterior_log_variance_clipped[t]
    xn = mean + (t != 0) * np.exp(0.5 * logvar) * nn_[i]
  np.testing.assert_allclose(out, xn, rtol=1e-4, atol=1e-4)


# ---- converter ----

SMALL = dict(
  in_channels=8,
  input_size=16,
  depth=2,
  hidden_size=64,
  num_heads=4,
  num_classes=10,
  class_dropout_prob=0.1,
  qk_norm=False,
  vae_1d=True,
  path_type="edm",
)


def _random_reference(model, seed=0):
  rng = np.random.default_rng(seed)
  params = model.init(
    jax.random.key(seed), jnp.zeros((1, 16, 8)), jnp.zeros((1,)), jnp.zeros((1,), int)
  )["params"]
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), params)
  return sit_to_reference(params, model), params


def test_converter_round_trip_and_errors():
  model = build_generator("sit", "mu", input_size=16, in_channels=8, num_classes=10)
  sd, params = _random_reference(model)
  xl_keys = {k for _, k, _ in key_map(build_generator("sit", "XL", input_size=64, in_channels=32))}
  # The 2-block model's keys, its last block renamed to XL's last, all exist in SiT-XL/1.
  small_keys = {k.replace("blocks.1.", "blocks.27.") for k in sd}
  assert small_keys <= xl_keys | {"pos_embed"}
  model2, params2 = sit_from_reference(SMALL, sd)
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  sd2 = sit_to_reference(params2, model2)
  assert set(sd2) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(sd2[k], sd[k])
  bad = dict(sd)
  bad.pop("blocks.1.mlp.fc1.bias")
  with pytest.raises(KeyError, match="blocks.1.mlp.fc1.bias"):
    sit_from_reference(SMALL, bad)
  with pytest.raises(ValueError, match="pos_embed"):
    sit_from_reference(
      {**SMALL, "input_size": 16, "hidden_size": 64}, {**sd, "pos_embed": sd["pos_embed"] + 1}
    )
  dit_cfg = {**SMALL, "learn_sigma": True}
  dit = generator_from_config(
    {
      "kind": "dit",
      **{
        k: v
        for k, v in SMALL.items()
        if k in ("in_channels", "input_size", "depth", "hidden_size", "num_heads", "num_classes")
      },
      "learn_sigma": True,
    }
  )
  assert isinstance(dit, DiT)
  sd_dit, _ = _random_reference(dit, 1)
  m, _ = sit_from_reference(dit_cfg, sd_dit)
  assert isinstance(m, DiT) and m.out_channels == 16


def test_convert_cli(tmp_path):
  model = build_generator("sit", "mu", input_size=16, in_channels=8, num_classes=10)
  sd, params = _random_reference(model, 2)
  cio.save_safetensors(sd, tmp_path / "model.safetensors")
  (tmp_path / "config.json").write_text(json.dumps(SMALL))
  from softvq_jax.cli.convert import main

  out = main(
    [
      "sit",
      "--config",
      str(tmp_path / "config.json"),
      "--weights",
      str(tmp_path / "model.safetensors"),
      "--out",
      str(tmp_path / "sit"),
    ]
  )
  loaded, cfg = checkpointing.load_model(out)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  rebuilt = generator_from_config(cfg["model"])
  assert rebuilt == model
  with pytest.raises(cio.WeightFileError, match="--weights"):
    convert_main(
      [
        "sit",
        "--config",
        str(tmp_path / "config.json"),
        "--weights",
        str(tmp_path / "nope.safetensors"),
        "--out",
        str(tmp_path / "x"),
      ]
    )


def test_bf16_and_remat_match_f32():
  kw = dict(input_size=16, in_channels=8, num_classes=10)
  f32 = build_generator("sit", "mu", **kw)
  bf16 = build_generator("sit", "mu", dtype=jnp.bfloat16, **kw)
  remat = build_generator("sit", "mu", remat=True, **kw)
  x = jax.random.normal(jax.random.key(0), (2, 16, 8))
  t, y = jnp.array([0.2, 0.9]), jnp.array([1, 10])

  @jax.jit
  def run():
    params = f32.init(jax.random.key(1), x, t, y)["params"]
    # perturb the zero-initialised layers so every weight matters
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    leaves = [a + 0.02 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)]
    params = jax.tree.unflatten(tree, leaves)
    loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, x, t, y) ** 2)
    return (
      f32.apply({"params": params}, x, t, y),
      bf16.apply({"params": params}, x, t, y),
      jax.grad(loss(f32))(params),
      jax.grad(loss(remat))(params),
    )

  ref, out, g_ref, g = run()
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=5e-2 * float(jnp.abs(ref).max()))
  assert float(jnp.abs(out - ref).max()) > 0  # bf16 really ran in bf16
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g, g_ref)


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_transport_paths_and_score(path):
  from softvq_jax.objectives import transport

  t = np.linspace(0.05, 0.95, 7)
  a, s, da, ds = transport.path_coefficients(t, path)
  h = 1e-6
  a2, s2, _, _ = transport.path_coefficients(t + h, path)
  np.testing.assert_allclose((a2 - a) / h, da, atol=1e-5)  # derivatives
  np.testing.assert_allclose((s2 - s) / h, ds, atol=1e-5)
  rng = np.random.default_rng(0)
  x, eps = rng.normal(size=(7, 3, 2)), rng.normal(size=(7, 3, 2))
  x_t, v = transport.interpolate(jnp.asarray(x), jnp.asarray(eps), jnp.asarray(t), path)
  np.testing.assert_allclose(x_t, a[:, None, None] * x + s[:, None, None] * eps, atol=1e-6)
  # The velocity -> score conversion gives the conditional score -eps / sigma.
  score = transport.score_from_velocity(v, x_t, jnp.asarray(t), path)
  np.testing.assert_allclose(score, -eps / s[:, None, None], rtol=1e-4, atol=1e-4)
  _, target = transport.prediction_target(
    jnp.asarray(x), jnp.asarray(eps), jnp.asarray(t), path, "score"
  )
  np.testing.assert_allclose(target, -eps / s[:, None, None], rtol=1e-5)
  # lognormal time sampling: quantiles follow the path's map of exp(N(0, 1))
  ts = np.sort(np.asarray(transport.sample_time(jax.random.key(0), 20000, "lognormal", path)))
  q = np.exp(np.array([-1.0, 0.0, 1.0]))
  want = q / (1 + q) if path == "linear" else 2 / np.pi * np.arctan(q)
  got = ts[(np.array([0.15865, 0.5, 0.84135]) * len(ts)).astype(int)]
  np.testing.assert_allclose(got, want, atol=0.01)


def test_training_loss_is_per_sample_mse():
  from softvq_jax.objectives import transport

  x = jnp.ones((4, 3, 2))
  loss = transport.training_loss(lambda xt, t: jnp.zeros_like(xt), x, jax.random.key(0))
  k_t, k_eps = jax.random.split(jax.random.key(0))
  t = transport.sample_time(k_t, 4)
  eps = jax.random.normal(k_eps, x.shape)
  _, v = transport.interpolate(x, eps, t)
  np.testing.assert_allclose(loss, np.mean(np.asarray(v) ** 2, axis=(1, 2)), rtol=1e-6)
  assert loss.shape == (4,)


def test_forward_macs_match_spec():
  """SPEC §3: SiT-XL forward is 29.0 GMAC at 64 tokens vs 118.6 GMAC at 256 (XL/2 on 32x32x4).

  XLA's cost analysis of the lowered (uncompiled) forward, flops / 2; it also counts the small
  elementwise work, hence the 1% tolerance. XLA's attention (not the CPU default's per-head
  loop, whose body the cost analysis counts once).
  """
  macs = {}
  for name, kw, xs in [
    ("64", dict(input_size=64, in_channels=32), (1, 64, 32)),
    ("256", dict(input_size=32, in_channels=4, patch_size=2), (1, 32, 32, 4)),
  ]:
    m = build_generator("sit", "XL", attn_impl="xla", **kw)
    t, y = jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
    p = jax.eval_shape(lambda m=m, xs=xs, t=t, y=y: m.init(jax.random.key(0), jnp.zeros(xs), t, y))
    fwd = jax.jit(lambda p, x, m=m, t=t, y=y: m.apply(p, x, t, y))
    macs[name] = fwd.lower(p, jax.ShapeDtypeStruct(xs, jnp.float32)).cost_analysis()["flops"] / 2e9
  np.testing.assert_allclose(macs["64"], 29.0, rtol=0.01)
  np.testing.assert_allclose(macs["256"], 118.6, rtol=0.01)
  assert 4.0 < macs["256"] / macs["64"] < 4.2
