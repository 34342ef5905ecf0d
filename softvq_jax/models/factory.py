"""Builds tokenizers from the `model` / `quantizer` config sections (ConfigDict or plain dict).

`build_tokenizer` returns a `Tokenizer` linen module with explicit hyper-parameters; names are
looked up in the registries (`TOKENIZERS`, `quantizers.QUANTIZERS`, `DTYPES`, the ViT variants),
so an unknown name fails with the choices. The values themselves are checked by
`softvq_jax.config.validate.validate_tokenizer` (the one validator), which reads the tables here;
exported model dirs hold configs that were validated when they were trained or converted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from softvq_jax.models import attention, quantizers, vit
from softvq_jax.models.tokenizer import Tokenizer, ViTDecoder, ViTEncoder
from softvq_jax.utils.config_access import cfg_get as _get

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
TO_PIXEL = ("linear", "conv")  # ViTDecoder.pixel_head
ATTN_IMPLS = attention.IMPLS  # "": per-head on CPU, jax's choice elsewhere


def _lookup(table: dict, name: Any, key: str) -> Any:
  """table[name], or a ValueError naming the config key and the choices."""
  if name not in table:
    raise ValueError(f"{key}={name!r}; known: {sorted(table)}")
  return table[name]


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


def build_quantizer(quantizer_cfg: Any, embed_dim: int) -> Any:
  """The quantizer module named by `quantizer.name` (a `quantizers.QUANTIZERS` lookup)."""
  name = _get(quantizer_cfg, "name", "softvq")
  return _lookup(quantizers.QUANTIZERS, name, "quantizer.name").from_config(
    quantizer_cfg, embed_dim
  )


def _build_softvq(model_cfg: Any, quantizer_cfg: Any) -> Tokenizer:
  """The SoftVQ-style tokenizer: ViT encoder with latent tokens, a quantizer, ViT decoder."""
  g = lambda k, d=None: _get(model_cfg, k, d)
  dtype = _lookup(DTYPES, g("dtype", "float32"), "model.dtype")
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
  return Tokenizer(
    encoder=encoder,
    decoder=decoder,
    quantize=build_quantizer(quantizer_cfg, dim),
    codebook_embed_dim=dim,
    dtype=dtype,
  )


# model.name -> builder(model_cfg, quantizer_cfg) of that tokenizer family.
TOKENIZERS: dict[str, Callable[[Any, Any], Tokenizer]] = {"softvq": _build_softvq}


def build_tokenizer(model_cfg: Any, quantizer_cfg: Any) -> Tokenizer:
  """The tokenizer module named by `model.name` (params are float32). Does not validate values:
  `config.validate` does, before training; impossible shapes fail in the modules."""
  return _lookup(TOKENIZERS, _get(model_cfg, "name", "softvq"), "model.name")(
    model_cfg, quantizer_cfg
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
