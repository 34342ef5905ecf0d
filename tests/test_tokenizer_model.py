"""Tokenizer model: the trainer-facing contract, token/pixel layouts, RoPE, dtypes, config
validation and full-size parameter counts (jax.eval_shape only, nothing large is initialised)."""

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from softvq_jax.models import rope
from softvq_jax.models.factory import abstract_params, build_quantizer, build_tokenizer, param_count
from softvq_jax.models.tokenizer import LAST_LAYER, LAST_LAYER_CONV, unpatchify
from softvq_jax.weights.reference_config import reference_to_model_config
from softvq_jax.weights.tokenizer import key_map

S, P, L, D, K, NC, B = 32, 8, 8, 4, 16, 2, 2
N = (S // P) ** 2


def tiny_cfg(**model_kw):
  vit = dict(variant="mu", patch_size=P, depth=1, width=0, heads=0)  # 1 x 64 x 4 heads
  model = dict(
    name="softvq",
    image_size=S,
    encoder=dict(vit),
    decoder=dict(vit),
    num_latent_tokens=L,
    codebook_embed_dim=D,
    layerscale_init=1e-5,
    use_rope=False,
    rope_theta=10.0,
    dec_cls_token=True,
    to_pixel="linear",
    dtype="float32",
    remat=False,
    attn_impl="",
    vq_mean=0.0,
    vq_std=1.0,
  )
  model.update(model_kw)
  quant = dict(
    name="softvq",
    codebook_size=K,
    num_codebooks=NC,
    tau=0.07,
    l2_norm=True,
    logit_form="cosine",
    entropy_loss_ratio=0.01,
    entropy_temperature=0.01,
    commit_beta=0.25,
    kl_weight=1e-6,
  )
  return model, quant


def _init(model, seed=0):
  x = jnp.zeros((1, S, S, 3))
  rngs = {"params": jax.random.PRNGKey(seed), "sample": jax.random.PRNGKey(seed + 1)}
  return jax.jit(model.init)(rngs, x)


def fake_params(model, seed=0):
  """Random params of the right tree/shapes without compiling the random initialisers (which
  takes several seconds on CPU): kernels ~ N(0, 1/fan_in), norms ~1, unit codewords."""
  rs = np.random.RandomState(seed)

  def fill(path, s):
    name = path[-1].key
    if name == "scale":
      v = 1 + 0.1 * rs.randn(*s.shape)
    elif name == "gamma":
      v = 0.3 + 0.1 * rs.randn(*s.shape)
    elif name == "embedding":
      v = rs.randn(*s.shape)
      v /= np.linalg.norm(v, axis=-1, keepdims=True)
    elif name == "kernel":
      v = rs.randn(*s.shape) / np.sqrt(math.prod(s.shape[:-1]))
    else:
      v = 0.3 * rs.randn(*s.shape)
    return jnp.asarray(v, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract_params(model))


@pytest.fixture(scope="module")
def images():
  return jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (B, S, S, 3)).astype(np.float32))


@pytest.fixture(scope="module")
def rope_model():
  model = build_tokenizer(*tiny_cfg(use_rope=True))
  return model, fake_params(model)


def test_init():
  """A real init of the tokenizer's own params (SPEC §1.1 scales). The ViT blocks are left out
  (depth 0): their truncated-normal initialisers take seconds to compile on CPU and are vit.py's."""
  model = build_tokenizer(*tiny_cfg())
  model = model.clone(encoder=model.encoder.clone(depth=0), decoder=model.decoder.clone(depth=0))
  params = _init(model)["params"]
  e, d = params["encoder"], params["decoder"]
  assert "blocks_0" not in e and set(e["norm"]) == {"scale", "bias"}
  assert float(jnp.abs(e["cls_token"]).max()) < 1e-4  # timm: N(0, 1e-6)
  for x in (e["latent_tokens"], e["latent_pos_embed"], e["pos_embed"], d["mask_token"]):
    assert 0.01 < float(jnp.std(x)) < 0.03  # 0.02 (trunc-)normal
  cb = params["quantize"]["embedding"]  # U(-1/K, 1/K), then unit rows (l2_norm)
  np.testing.assert_allclose(np.linalg.norm(cb, axis=-1), 1, 1e-5)
  assert len(np.unique(np.asarray(cb))) == cb.size
  assert 0.01 < float(jnp.std(params["quant_conv"]["kernel"])) < 0.03


def test_contract_param_tree_and_info(rope_model, images):
  model, params = rope_model
  assert set(params) == {"encoder", "quant_conv", "quantize", "post_quant_conv", "decoder"}
  assert set(params["encoder"]) == {
    "latent_tokens",
    "latent_pos_embed",
    "cls_token",
    "pos_embed",
    "patch_embed",
    "blocks_0",
    "norm",
    "freqs",
  }
  assert set(params["decoder"]) == {
    "mask_token",
    "latent_pos_embed",
    "cls_token",
    "pos_embed",
    "blocks_0",
    "norm",
    "to_pixel",
    "freqs",
  }
  assert params["quantize"]["embedding"].shape == (NC, K, D)
  assert params["encoder"]["pos_embed"].shape == (1, 1 + N, 64)
  assert params["encoder"]["freqs"].shape == (2, 1, 32)  # (2, depth, heads * hd / 2)
  node = params
  for k in LAST_LAYER:
    node = node[k]
  assert node.shape == (64, P * P * 3)
  assert model.last_layer == LAST_LAYER

  def run(p, x, key):
    x_rec, aux = model.apply({"params": p}, x, train=True, rngs={"sample": key})
    z_q, info = model.apply({"params": p}, x, method=model.encode)
    return x_rec, aux, z_q, info, model.apply({"params": p}, z_q, method=model.decode)

  x_rec, aux, z_q, info, dec = jax.jit(run)(params, images, jax.random.PRNGKey(3))
  assert x_rec.shape == (B, S, S, 3) and x_rec.dtype == jnp.float32
  for d in (aux, info):
    assert d["z_e"].shape == d["z_q"].shape == (B, L, D)
    assert d["indices"].shape == (B, L) and d["indices"].dtype == jnp.int32
    assert d["code_counts"].shape == (NC, K) and int(d["code_counts"].sum()) == B * L
    assert d["probs"].shape == d["logits"].shape == (B, L, K)
    assert set(d["metrics"]) == {"max_prob", "zq_z_cos", "codebook_usage_batch"}
  assert float(aux["quantizer_loss"]) != 0.0 and float(info["quantizer_loss"]) == 0.0
  np.testing.assert_allclose(z_q, info["z_q"])
  np.testing.assert_allclose(dec, x_rec, atol=1e-5)  # decode(encode(x)) == forward in softvq


def test_unpatchify_order():
  p, h = 2, 3
  x = np.random.RandomState(0).randn(1, h * h, p * p * 3).astype(np.float32)
  img = np.asarray(unpatchify(jnp.asarray(x), p))
  for ty in range(h):
    for tx in range(h):
      for py in range(p):
        for px in range(p):
          for c in range(3):
            assert img[0, ty * p + py, tx * p + px, c] == x[0, ty * h + tx, (py * p + px) * 3 + c]


def test_decoder_without_cls_token(images):
  model = build_tokenizer(*tiny_cfg(dec_cls_token=False))
  params = fake_params(model)
  assert "cls_token" not in params["decoder"]
  assert params["decoder"]["pos_embed"].shape == (1, N, 64)
  out, _ = jax.jit(model.apply)({"params": params}, images)
  assert out.shape == (B, S, S, 3) and bool(jnp.all(jnp.isfinite(out)))


def test_conv_to_pixel(images):
  model = build_tokenizer(
    *tiny_cfg(
      encoder=dict(variant="mu", patch_size=16, depth=1),
      decoder=dict(variant="mu", patch_size=16, depth=1),
      to_pixel="conv",
    )
  )
  params = fake_params(model)
  node = params
  for k in LAST_LAYER_CONV:
    node = node[k]
  assert node.shape == (3, 3, 16, 3) and model.last_layer == LAST_LAYER_CONV
  out, _ = jax.jit(model.apply)({"params": params}, images)
  assert out.shape == (B, S, S, 3)


def test_rope_angles_layout_and_init():
  depth, heads, hd, theta = 2, 3, 8, 10.0
  freqs = rope.mixed_freqs_init(depth, heads, hd, theta)(
    jax.random.PRNGKey(0), (2, depth, heads * hd // 2)
  )
  f = np.asarray(freqs).reshape(2, depth, heads, hd // 2)
  mag = theta ** (-np.arange(0, hd, 4) / hd)
  # each (fx, fy) pair is the axial magnitude rotated by a per-head angle; second half by +pi/2
  np.testing.assert_allclose(
    np.hypot(f[0], f[1]),
    np.concatenate([mag, mag])[None, None] * np.ones((depth, heads, 1)),
    rtol=1e-5,
  )
  q = hd // 4
  np.testing.assert_allclose(f[0, ..., q:], -f[1, ..., :q], atol=1e-6)  # cos(a + pi/2) = -sin a
  ang = np.asarray(rope.grid_angles(freqs, 3, heads))
  assert ang.shape == (depth, heads, 9, hd // 2)
  for n in range(9):  # token n sits at column n % 3, row n // 3
    np.testing.assert_allclose(ang[:, :, n], (n % 3) * f[0] + (n // 3) * f[1], atol=1e-6)


def test_bf16_runs_and_is_close_to_f32(rope_model, images):
  model, params = rope_model
  bf16 = build_tokenizer(*tiny_cfg(use_rope=True, dtype="bfloat16"))
  out32, info32 = jax.jit(model.apply)({"params": params}, images)
  out16, info16 = jax.jit(bf16.apply)({"params": params}, images)
  assert out16.dtype == jnp.float32 and info16["z_q"].dtype == jnp.float32
  # bf16 matmuls (8-bit mantissa): close-ish to the f32 model on the tiny net
  np.testing.assert_allclose(out16, out32, atol=0.05)
  np.testing.assert_allclose(info16["z_e"], info32["z_e"], atol=0.05)


def test_remat_gives_the_same_output(rope_model, images):
  model, params = rope_model
  remat = build_tokenizer(*tiny_cfg(use_rope=True, remat=True))
  out, _ = jax.jit(model.apply)({"params": params}, images)
  out_remat, _ = jax.jit(remat.apply)({"params": params}, images)
  np.testing.assert_allclose(out, out_remat, atol=1e-6)


def test_gradients_reach_encoder_codebook_and_decoder(rope_model, images):
  model, params = rope_model

  def f(p):
    x_rec, aux = model.apply({"params": p}, images, train=True)
    return jnp.mean((x_rec - images) ** 2) + aux["quantizer_loss"]

  g = jax.jit(jax.grad(f))(params)
  norm = lambda t: np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(t)))
  for part in ("encoder", "quant_conv", "quantize", "post_quant_conv", "decoder"):
    assert norm(g[part]) > 0, part  # the soft bottleneck is differentiable end to end
  assert norm(g["encoder"]["freqs"]) > 0  # learnable RoPE frequencies


@pytest.mark.parametrize("name", ["vq", "kl", "ae"])
def test_other_quantizers_build_and_run(name, images):
  m, q = tiny_cfg()
  q["name"] = name
  model = build_tokenizer(m, q)
  params = fake_params(model)
  if name == "kl":
    assert params["quant_conv"]["kernel"].shape == (64, 2 * D)
  assert ("quantize" in params) == (name == "vq")
  f = jax.jit(lambda p, k: model.apply({"params": p}, images, train=True, rngs={"sample": k}))
  x_rec, aux = f(params, jax.random.key(0))
  assert x_rec.shape == (B, S, S, 3) and aux["z_q"].shape == (B, L, D)
  assert np.isfinite(float(aux["quantizer_loss"]))
  assert (float(aux["quantizer_loss"]) > 0) == (name != "ae")


def test_unknown_names_fail_in_the_registries():
  """build_tokenizer does not validate values (config.validate does), but an unknown name in an
  exported config fails with the key and the choices."""
  for section, key, value, named in [
    ("model", "name", "maetok", "model.name"),
    ("model", "dtype", "float64", "model.dtype"),
    ("quantizer", "name", "fsq", "quantizer.name"),
    ("encoder", "variant", "XXL", "model.encoder.variant"),
  ]:
    m, q = tiny_cfg()
    target = {"model": m, "quantizer": q, "encoder": m["encoder"]}[section]
    target[key] = value
    with pytest.raises(ValueError, match=named.replace(".", r"\.")) as e:
      build_tokenizer(m, q)
    assert repr(value) in str(e.value) and "known" in str(e.value)  # the choices are listed
  known = r"quantizer\.name='fsq'; known: \['ae', 'kl', 'softvq', 'vq'\]"
  with pytest.raises(ValueError, match=known):
    build_quantizer({"name": "fsq"}, D)


def _full(enc, dec, tokens, res=256):
  m = dict(
    name="softvq",
    image_size=res,
    encoder=dict(variant=enc, patch_size=16),
    decoder=dict(variant=dec, patch_size=16),
    num_latent_tokens=tokens,
    codebook_embed_dim=2048 // tokens,
  )
  q = dict(name="softvq", codebook_size=8192, num_codebooks=4)
  return m, q


def _unused_decoder_patch_embed(width, p=16):
  return width * 3 * p * p + width  # in the reference checkpoints, never used (not in ours)


def _reference_keys(fixtures_dir):
  out = {}
  for line in (fixtures_dir / "softvq_b64_state_dict_keys.txt").read_text().splitlines():
    key, shape = line.split("\t")[:2]
    out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
  return out


def test_b64_param_tree_equals_the_converted_reference_shapes(fixtures_dir):
  ref = _reference_keys(fixtures_dir)
  hf = dict(
    image_size=256,
    codebook_size=8192,
    codebook_embed_dim=32,
    codebook_l2_norm=True,
    num_codebooks=4,
    tau=0.07,
    enc_type="vit",
    dec_type="vit",
    encoder_model="vit_base_patch14_dinov2.lvd142m",
    decoder_model="vit_base_patch14_dinov2.lvd142m",
    num_latent_tokens=64,
  )
  cfg = reference_to_model_config(hf)
  assert cfg["model"]["encoder"] == dict(variant="B", patch_size=16, depth=12, width=768, heads=12)
  abstract = abstract_params(build_tokenizer(cfg["model"], cfg["quantizer"]))
  flat = {
    tuple(k.key for k in path): v.shape
    for path, v in jax.tree_util.tree_flatten_with_path(abstract)[0]
  }
  layout = {"id": lambda s: s, "linear": lambda s: s[::-1], "conv": lambda s: (*s[2:], s[1], s[0])}
  converted = {path: layout[kind](ref[key]) for path, key, kind in key_map(cfg)}
  assert converted == flat
  dropped = set(ref) - {key for _, key, _ in key_map(cfg)}
  assert dropped == {
    "decoder.model.patch_embed.proj.weight",
    "decoder.model.patch_embed.proj.bias",
    "quantize.codebook_used",
  }
  total_ref = sum(math.prod(s) for k, s in ref.items() if k != "quantize.codebook_used")
  assert total_ref == 173_563_680  # REFERENCE_NOTES §12
  assert param_count(abstract) == total_ref - _unused_decoder_patch_embed(768) == 172_973_088


@pytest.mark.parametrize(
  "enc,dec,tokens,res,want,tol",
  [
    ("L", "L", 64, 256, 608.9e6, 0.05e6),  # SoftVQ-L-64 (SPEC §1.3)
    ("B", "L", 64, 256, 391e6, 0.5e6),  # SoftVQ-BL-64
    ("S", "S", 64, 256, 45e6, 0.5e6),  # SoftVQ-S-64: 44.84M with the unused decoder patch_embed
  ],
)
def test_full_size_param_counts(enc, dec, tokens, res, want, tol):
  n = param_count(abstract_params(build_tokenizer(*_full(enc, dec, tokens, res))))
  width = {"S": 384, "B": 768, "L": 1024}[dec]
  assert abs(n + _unused_decoder_patch_embed(width) - want) < tol, n


def test_config_sections_are_not_mutated():
  m, q = tiny_cfg()
  m0, q0 = copy.deepcopy(m), copy.deepcopy(q)
  build_tokenizer(m, q)
  assert (m, q) == (m0, q0)
