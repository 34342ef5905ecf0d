"""Builds tokenizers from the `model` / `quantizer` config sections (ConfigDict or plain dict).

`validate_tokenizer_config` checks every value and raises ValueError naming the key;
`build_tokenizer` returns a `Tokenizer` linen module with explicit hyper-parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from softvq_jax.models import quantizers, vit
from softvq_jax.models.tokenizer import Tokenizer, ViTDecoder, ViTEncoder

TOKENIZERS = {"softvq": Tokenizer}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
TO_PIXEL = ("linear", "conv")
LOGIT_FORMS = ("cosine", "distance")
ATTN_IMPLS = ("", "xla", "cudnn")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  if isinstance(cfg, Mapping) or hasattr(cfg, "get"):  # dict or ConfigDict
    return cfg.get(key, default)
  return getattr(cfg, key, default)


def resolve_vit(section: Any, where: str) -> tuple[int, int, int, int]:
  """(depth, width, heads, patch_size) of an encoder/decoder section; 0 -> from the variant."""
  variant = _get(section, "variant", "B")
  try:
    d0, w0, h0 = vit.vit_variant(variant)
  except ValueError as e:
    raise ValueError(f"{where}.variant: {e}") from e
  depth = int(_get(section, "depth", 0) or d0)
  width = int(_get(section, "width", 0) or w0)
  heads = int(_get(section, "heads", 0) or h0)
  patch = int(_get(section, "patch_size", 16))
  return depth, width, heads, patch


def validate_tokenizer_config(model_cfg: Any, quantizer_cfg: Any) -> None:
  """Raises ValueError naming the offending key; silent if the config can be built."""

  def need(cond: bool, msg: str) -> None:
    if not cond:
      raise ValueError(msg)

  name = _get(model_cfg, "name", "softvq")
  need(name in TOKENIZERS, f"model.name={name!r}; known: {sorted(TOKENIZERS)}")
  s = _get(model_cfg, "image_size")
  need(isinstance(s, int) and s > 0, f"model.image_size={s!r} must be a positive int")
  use_rope = bool(_get(model_cfg, "use_rope", False))
  for part in ("encoder", "decoder"):
    section = _get(model_cfg, part)
    need(section is not None, f"model.{part} is missing")
    depth, width, heads, p = resolve_vit(section, f"model.{part}")
    need(depth > 0, f"model.{part}.depth={depth} must be positive")
    need(
      p > 0 and s % p == 0, f"model.image_size={s} is not divisible by model.{part}.patch_size={p}"
    )
    need(
      heads > 0 and width % heads == 0,
      f"model.{part}.width={width} is not divisible by model.{part}.heads={heads}",
    )
    if use_rope:
      need(
        (width // heads) % 4 == 0,
        f"model.use_rope needs head_dim % 4 == 0; model.{part} has head_dim {width // heads}",
      )
  rope_mode = _get(model_cfg, "rope_mode", "mixed")
  need(
    rope_mode == "mixed",
    f"model.rope_mode={rope_mode!r}: only 'mixed' 2-D RoPE is supported (the reference's axial "
    "RoPE crashes; see REFERENCE_NOTES §4.4)",
  )
  theta = _get(model_cfg, "rope_theta", 10.0)
  need(theta > 0, f"model.rope_theta={theta} must be positive")
  n_lat = _get(model_cfg, "num_latent_tokens")
  need(isinstance(n_lat, int) and n_lat > 0, f"model.num_latent_tokens={n_lat!r} must be > 0")
  dim = _get(model_cfg, "codebook_embed_dim")
  need(isinstance(dim, int) and dim > 0, f"model.codebook_embed_dim={dim!r} must be > 0")
  ls = _get(model_cfg, "layerscale_init", 1e-5)
  need(ls is None or ls >= 0, f"model.layerscale_init={ls} must be >= 0 (or None)")
  to_pixel = _get(model_cfg, "to_pixel", "linear")
  need(to_pixel in TO_PIXEL, f"model.to_pixel={to_pixel!r}; use one of {TO_PIXEL}")
  if to_pixel == "conv":
    p_dec = resolve_vit(_get(model_cfg, "decoder"), "model.decoder")[3]
    need(p_dec == 16, f"model.to_pixel='conv' upsamples x16; model.decoder.patch_size={p_dec}")
  dt = _get(model_cfg, "dtype", "float32")
  need(dt in DTYPES, f"model.dtype={dt!r}; use one of {sorted(DTYPES)}")
  impl = _get(model_cfg, "attn_impl", "") or ""
  need(impl in ATTN_IMPLS, f"model.attn_impl={impl!r}; use one of {ATTN_IMPLS}")
  std = _get(model_cfg, "vq_std", 1.0)
  need(std > 0, f"model.vq_std={std} must be positive")

  q = _get(quantizer_cfg, "name", "softvq")
  need(q in quantizers.QUANTIZERS, f"quantizer.name={q!r}; known: {sorted(quantizers.QUANTIZERS)}")
  if q in ("softvq", "vq"):
    k = _get(quantizer_cfg, "codebook_size")
    need(isinstance(k, int) and k > 0, f"quantizer.codebook_size={k!r} must be > 0")
    nc = _get(quantizer_cfg, "num_codebooks", 1)
    need(isinstance(nc, int) and nc > 0, f"quantizer.num_codebooks={nc!r} must be > 0")
    need(
      n_lat % nc == 0,
      f"model.num_latent_tokens={n_lat} is not divisible by quantizer.num_codebooks={nc}",
    )
    ratio = _get(quantizer_cfg, "entropy_loss_ratio", 0.0)
    need(ratio >= 0, f"quantizer.entropy_loss_ratio={ratio} must be >= 0")
    temp = _get(quantizer_cfg, "entropy_temperature", 0.01)
    need(temp > 0, f"quantizer.entropy_temperature={temp} must be positive")
  if q == "softvq":
    tau = _get(quantizer_cfg, "tau", 0.07)
    need(tau > 0, f"quantizer.tau={tau} must be positive")
    form = _get(quantizer_cfg, "logit_form", "cosine")
    need(form in LOGIT_FORMS, f"quantizer.logit_form={form!r}; use one of {LOGIT_FORMS}")
  if q == "vq":
    beta = _get(quantizer_cfg, "commit_beta", 0.25)
    need(beta >= 0, f"quantizer.commit_beta={beta} must be >= 0")
  if q == "kl":
    w = _get(quantizer_cfg, "kl_weight", 1e-6)
    need(w >= 0, f"quantizer.kl_weight={w} must be >= 0")


def build_quantizer(quantizer_cfg: Any, embed_dim: int):
  """The quantizer module named by `quantizer.name`."""
  g = lambda k, d=None: _get(quantizer_cfg, k, d)
  name = g("name", "softvq")
  if name == "softvq":
    return quantizers.SoftVectorQuantizer(
      codebook_size=g("codebook_size"),
      embed_dim=embed_dim,
      num_codebooks=g("num_codebooks", 1),
      tau=g("tau", 0.07),
      l2_norm=bool(g("l2_norm", True)),
      logit_form=g("logit_form", "cosine"),
      entropy_loss_ratio=g("entropy_loss_ratio", 0.0),
      entropy_temperature=g("entropy_temperature", 0.01),
    )
  if name == "vq":
    return quantizers.VectorQuantizer(
      codebook_size=g("codebook_size"),
      embed_dim=embed_dim,
      num_codebooks=g("num_codebooks", 1),
      l2_norm=bool(g("l2_norm", True)),
      commit_beta=g("commit_beta", 0.25),
      entropy_loss_ratio=g("entropy_loss_ratio", 0.0),
      entropy_temperature=g("entropy_temperature", 0.01),
    )
  if name == "kl":
    return quantizers.DiagonalGaussianQuantizer(embed_dim=embed_dim, kl_weight=g("kl_weight", 1e-6))
  return quantizers.IdentityQuantizer()


def build_tokenizer(model_cfg: Any, quantizer_cfg: Any) -> Tokenizer:
  """Validates the config and returns the tokenizer module (params are float32)."""
  validate_tokenizer_config(model_cfg, quantizer_cfg)
  g = lambda k, d=None: _get(model_cfg, k, d)
  dtype = DTYPES[g("dtype", "float32")]
  common = dict(
    image_size=g("image_size"),
    num_latent_tokens=g("num_latent_tokens"),
    layerscale_init=g("layerscale_init", 1e-5),
    use_rope=bool(g("use_rope", False)),
    rope_theta=float(g("rope_theta", 10.0)),
    remat=bool(g("remat", False)),
    attn_impl=g("attn_impl", "") or None,
    dtype=dtype,
  )
  ed, ew, eh, ep = resolve_vit(g("encoder"), "model.encoder")
  dd, dw, dh, dp = resolve_vit(g("decoder"), "model.decoder")
  encoder = ViTEncoder(patch_size=ep, depth=ed, width=ew, num_heads=eh, **common)
  decoder = ViTDecoder(
    patch_size=dp,
    depth=dd,
    width=dw,
    num_heads=dh,
    use_cls_token=bool(g("dec_cls_token", True)),
    pixel_head=g("to_pixel", "linear"),
    **common,
  )
  dim = g("codebook_embed_dim")
  return TOKENIZERS[g("name", "softvq")](
    encoder=encoder,
    decoder=decoder,
    quantize=build_quantizer(quantizer_cfg, dim),
    codebook_embed_dim=dim,
    dtype=dtype,
  )


def abstract_params(model: Tokenizer) -> Any:
  """ShapeDtypeStructs of the params (no allocation), via jax.eval_shape."""
  s = model.encoder.image_size
  x = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
  key = jax.random.PRNGKey(0)
  return jax.eval_shape(lambda k, x: model.init({"params": k, "sample": k}, x), key, x)["params"]


def param_count(tree: Any) -> int:
  """Number of scalars in a (possibly abstract) param tree."""
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
