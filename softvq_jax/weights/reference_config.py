"""Reference `ModelArgs` config (HF config.json) <-> our {"model", "quantizer"} config sections.

Missing reference keys take the `ModelArgs` defaults of the reference (REFERENCE_NOTES §2, §11):
APE on, RoPE off, decoder cls token on, linear to_pixel. Backbone sizes come from the timm model
name (DINOv2 S/B/L/g) and may be overridden by `vit_overrides` {embed_dim, depth, num_heads} (as in
the parity fixtures; heads cannot be inferred from weight shapes). `encoder_vit_overrides` /
`decoder_vit_overrides` (our extension) override one side only.

Every field is checked before use (`check_reference_config`): unknown keys are refused with the
closest known ones (a typo such as `tua` would otherwise convert with the default tau), values of
the wrong type (`"sixteen"` for `num_latent_tokens`, `"false"` for a bool) name the key, and a
config read with `checks.read_config` names its file in every error.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from absl import logging

from softvq_jax.models import vit
from softvq_jax.weights.checks import (
  ReferenceConfigError,
  check_known_keys,
  check_types,
  keep_source,
  where,
)

# The reference ModelArgs defaults (modelling/tokenizer.py at 7cc3e96), as far as they matter here.
REFERENCE_DEFAULTS: dict[str, Any] = {
  "image_size": 256,
  "base_image_size": 256,
  "codebook_size": 16384,
  "codebook_embed_dim": 8,
  "codebook_l2_norm": True,
  "codebook_show_usage": True,
  "commit_loss_beta": 0.25,
  "entropy_loss_ratio": 0.0,
  "vq_loss_ratio": 1.0,
  "kl_loss_weight": 1e-6,
  "tau": 0.1,
  "num_codebooks": 1,
  "enc_type": "cnn",
  "dec_type": "cnn",
  "encoder_model": "llamagen_encoder",
  "decoder_model": "llamagen_decoder",
  "num_latent_tokens": 256,
  "to_pixel": "linear",
  "enc_tuning_method": "full",
  "dec_tuning_method": "full",
  "enc_pretrained": True,
  "dec_pretrained": False,
  "enc_patch_size": 16,
  "dec_patch_size": 16,
  "enc_drop_path_rate": 0.0,
  "dec_drop_path_rate": 0.0,
  "enc_token_drop": 0.0,
  "enc_token_drop_max": 0.6,
  "dec_cls_token": True,
  "use_ape": True,
  "use_rope": False,
  "rope_mixed": False,
  "rope_theta": 10.0,
  "repa": False,
  "repa_patch_size": 16,
  "repa_model": "vit_base_patch16_224",
  "repa_proj_dim": 2048,
  "repa_loss_weight": 0.1,
  "repa_align": "global",
  "vq_mean": 0.0,
  "vq_std": 1.0,
}

# Value kinds (checks.KINDS) of the ModelArgs fields above and of the other fields a reference
# config may hold: the CNN fields of ModelArgs, `repa_layer_indices` (an older ModelArgs, in the
# released HF configs), the hub mixin's card fields, `model_class` and the `vit_overrides` dicts.
REFERENCE_KINDS: dict[str, str] = {
  **{k: type(v).__name__ for k, v in REFERENCE_DEFAULTS.items()},
  "encoder_ch_mult": "list",
  "decoder_ch_mult": "list",
  "z_channels": "int",
  "dropout_p": "float",
  "repa_layer_indices": "list",
  "tags": "list",
  "repo_url": "str",
  "license": "str",
  "model_class": "str",
  "vit_overrides": "dict",
  "encoder_vit_overrides": "dict",
  "decoder_vit_overrides": "dict",
}
OVERRIDE_KEYS = ("vit_overrides", "encoder_vit_overrides", "decoder_vit_overrides")
_OVERRIDE_KINDS = {"embed_dim": "int", "depth": "int", "num_heads": "int"}

# timm DINOv2 names (without the pretrained tag) -> our ViT variants.
TIMM_TO_VARIANT = {
  "vit_small_patch14_dinov2": "S",
  "vit_base_patch14_dinov2": "B",
  "vit_large_patch14_dinov2": "L",
  "vit_giant_patch14_dinov2": "g",
}
VARIANT_TO_TIMM = {v: f"{k}.lvd142m" for k, v in TIMM_TO_VARIANT.items()}
# Reference model classes <-> our quantizer names.
MODEL_CLASSES = {"SoftVQModel": "softvq", "VQModel": "vq", "KLModel": "kl", "AEModel": "ae"}
QUANTIZER_TO_CLASS = {v: k for k, v in MODEL_CLASSES.items()}
_SUPPORTED_TO_PIXEL = ("linear", "conv")


def check_reference_config(config: Mapping[str, Any]) -> dict[str, Any]:
  """The ModelArgs fields of `config` (a fixture's `model_args` too), checked: ReferenceConfigError
  for unknown keys (with close matches) and values of the wrong type, naming the file."""
  nested = isinstance(config, Mapping) and isinstance(config.get("model_args"), Mapping)
  args = keep_source(dict(config["model_args"] if nested else config), config)
  if nested:  # a fixture: metadata at the top level, the overrides beside `model_args`
    for key in (*OVERRIDE_KEYS, "model_class"):
      if key in config and key not in args:
        args[key] = config[key]
  check_known_keys(args, REFERENCE_KINDS, "reference tokenizer config (ModelArgs)")
  check_types(args, REFERENCE_KINDS, "reference tokenizer config")
  for key in OVERRIDE_KEYS:
    over = keep_source(dict(args.get(key) or {}), config)
    check_known_keys(over, _OVERRIDE_KINDS, f"`{key}`")
    check_types(over, _OVERRIDE_KINDS, f"`{key}`")
  return args


def flatten_reference_config(config: Mapping[str, Any]) -> dict[str, Any]:
  """The checked ModelArgs fields of `config` merged over the defaults (a fixture's `model_args`
  too). Override dicts (`vit_overrides`, `encoder_vit_overrides`, `decoder_vit_overrides`) and
  `model_class` are carried along."""
  return keep_source({**REFERENCE_DEFAULTS, **check_reference_config(config)}, config)


def timm_variant(name: str, key: str, source: Any = None) -> str:
  """'vit_base_patch14_dinov2.lvd142m' -> 'B'; a clear error for unsupported backbones (naming
  the file of `source`, a FileDict, if given)."""
  base = str(name).split(".")[0]
  if base not in TIMM_TO_VARIANT:
    raise ReferenceConfigError(
      f"{where(source)}{key}={name!r} is not supported: only the DINOv2 ViTs without registers "
      f"({', '.join(VARIANT_TO_TIMM.values())}) are (register/CLIP/SAM/EVA/MoVQ/CNN backbones are "
      "not used by any released SoftVQ model)"
    )
  return TIMM_TO_VARIANT[base]


def _vit_section(ref: Mapping[str, Any], side: str) -> dict[str, Any]:
  key = f"{'encoder' if side == 'enc' else 'decoder'}_model"
  variant = timm_variant(ref[key], key, ref)
  depth, width, heads = vit.vit_variant(variant)
  over = dict(ref.get("vit_overrides") or {})
  over.update(ref.get(f"{'encoder' if side == 'enc' else 'decoder'}_vit_overrides") or {})
  return {
    "variant": variant,
    "patch_size": int(ref[f"{side}_patch_size"]),
    "depth": int(over.get("depth", depth)),
    "width": int(over.get("embed_dim", width)),
    "heads": int(over.get("num_heads", heads)),
  }


def reference_to_model_config(
  config: Mapping[str, Any], quantizer_name: str | None = None
) -> dict[str, dict[str, Any]]:
  """Reference config -> {"model": {...}, "quantizer": {...}} in our schema (incl. vq_mean/std).

  The quantizer is `quantizer_name`, else `config["model_class"]` (SoftVQModel/VQModel/KLModel/
  AEModel), else soft VQ (the released HF checkpoints are SoftVQModel).
  """
  ref = flatten_reference_config(config)
  for side, key in (("enc", "encoder_model"), ("dec", "decoder_model")):
    if ref[f"{side}_type"] != "vit" and str(ref[key]).startswith("llamagen"):
      raise ReferenceConfigError(
        where(ref)
        + f"{side}_type={ref[f'{side}_type']!r}, {key}={ref[key]!r}: CNN (LlamaGen) tokenizers are "
        "not supported; the SoftVQ models use DINOv2-shaped ViTs"
      )
  model = _vit_section(ref, "enc"), _vit_section(ref, "dec")
  if "g" in (model[0]["variant"], model[1]["variant"]):
    raise ReferenceConfigError(
      where(ref)
      + "vit_giant_patch14_dinov2 uses a SwiGLU MLP that vit.Block does not implement; no released "
      "SoftVQ model uses it"
    )
  if ref["use_rope"] and not ref["rope_mixed"]:
    raise ReferenceConfigError(
      where(ref)
      + "use_rope=True with rope_mixed=False (axial RoPE) is broken in the reference and not "
      "supported; use rope_mixed=True"
    )
  if not ref["use_ape"] and not ref["use_rope"]:
    raise ReferenceConfigError(
      where(ref) + "use_ape=False without RoPE crashes the reference decoder; not supported"
    )
  if ref["to_pixel"] not in _SUPPORTED_TO_PIXEL:
    raise ReferenceConfigError(
      where(ref) + f"to_pixel={ref['to_pixel']!r}: only {_SUPPORTED_TO_PIXEL} are supported"
    )
  if ref["enc_token_drop"]:
    logging.info(
      "enc_token_drop=%s ignored (training-only; broken in the reference)", ref["enc_token_drop"]
    )
  name = quantizer_name or MODEL_CLASSES.get(ref.get("model_class", ""), "softvq")
  if name not in QUANTIZER_TO_CLASS:
    raise ReferenceConfigError(
      where(ref) + f"quantizer name {name!r}; known: {sorted(QUANTIZER_TO_CLASS)}"
    )
  model_cfg = {
    "name": "softvq",
    "image_size": int(ref["image_size"]),
    "encoder": model[0],
    "decoder": model[1],
    "num_latent_tokens": int(ref["num_latent_tokens"]),
    "codebook_embed_dim": int(ref["codebook_embed_dim"]),
    "layerscale_init": 1e-5,  # DINOv2 init_values
    "use_rope": bool(ref["use_rope"]),
    "rope_theta": float(ref["rope_theta"]),
    "dec_cls_token": bool(ref["dec_cls_token"]),
    "to_pixel": ref["to_pixel"],
    "dtype": "float32",
    "remat": False,
    "attn_impl": "",
    "vq_mean": float(ref["vq_mean"]),
    "vq_std": float(ref["vq_std"]),
  }
  quantizer_cfg = {
    "name": name,
    "codebook_size": int(ref["codebook_size"]),
    "num_codebooks": int(ref["num_codebooks"]) if name == "softvq" else 1,
    "tau": float(ref["tau"]),
    "l2_norm": bool(ref["codebook_l2_norm"]),
    "logit_form": "cosine",
    "entropy_loss_ratio": float(ref["entropy_loss_ratio"]),
    "entropy_temperature": 0.01,
    "commit_beta": float(ref["commit_loss_beta"]),
    "kl_weight": float(ref["kl_loss_weight"]),
  }
  return {"model": model_cfg, "quantizer": quantizer_cfg}


def model_to_reference_config(config: Any) -> dict[str, Any]:
  """Our config ({"model", "quantizer"}, dict or ConfigDict) -> a flat reference ModelArgs dict.

  Backbones that are not a stock DINOv2 size get `vit_overrides` (or per-side overrides).
  """
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  m, q = copy.deepcopy(dict(config["model"])), dict(config["quantizer"])
  if m.get("layerscale_init", 1e-5) is None:
    raise ValueError("model.layerscale_init=None has no reference equivalent (DINOv2 LayerScale)")
  if q.get("logit_form", "cosine") != "cosine":
    logging.warning("quantizer.logit_form=%r has no reference equivalent", q["logit_form"])
  sides = {}
  for part in ("encoder", "decoder"):
    s = m[part]
    d0, w0, h0 = vit.vit_variant(s.get("variant", "B"))
    dims = (int(s.get("depth") or d0), int(s.get("width") or w0), int(s.get("heads") or h0))
    variant = s.get("variant", "B")
    timm = VARIANT_TO_TIMM.get(variant, VARIANT_TO_TIMM["B"])
    std = vit.vit_variant(TIMM_TO_VARIANT[timm.split(".")[0]])
    sides[part] = (timm, dims, dims != std, int(s.get("patch_size", 16)))
  ref = {
    "model_class": QUANTIZER_TO_CLASS[q.get("name", "softvq")],
    "image_size": int(m["image_size"]),
    "base_image_size": int(m["image_size"]),
    "codebook_size": int(q.get("codebook_size", REFERENCE_DEFAULTS["codebook_size"])),
    "codebook_embed_dim": int(m["codebook_embed_dim"]),
    "codebook_l2_norm": bool(q.get("l2_norm", True)),
    "codebook_show_usage": True,
    "commit_loss_beta": float(q.get("commit_beta", 0.25)),
    "entropy_loss_ratio": float(q.get("entropy_loss_ratio", 0.0)),
    "kl_loss_weight": float(q.get("kl_weight", 1e-6)),
    "tau": float(q.get("tau", 0.07)),
    "num_codebooks": int(q.get("num_codebooks", 1)),
    "enc_type": "vit",
    "dec_type": "vit",
    "encoder_model": sides["encoder"][0],
    "decoder_model": sides["decoder"][0],
    "enc_patch_size": sides["encoder"][3],
    "dec_patch_size": sides["decoder"][3],
    "enc_pretrained": False,
    "dec_pretrained": False,
    "num_latent_tokens": int(m["num_latent_tokens"]),
    "to_pixel": m.get("to_pixel", "linear"),
    "dec_cls_token": bool(m.get("dec_cls_token", True)),
    "use_ape": True,
    "use_rope": bool(m.get("use_rope", False)),
    "rope_mixed": bool(m.get("use_rope", False)),
    "rope_theta": float(m.get("rope_theta", 10.0)),
    "repa": False,
    "vq_mean": float(m.get("vq_mean", 0.0)),
    "vq_std": float(m.get("vq_std", 1.0)),
  }
  as_over = lambda d: {"depth": d[0], "embed_dim": d[1], "num_heads": d[2]}
  enc, dec = sides["encoder"], sides["decoder"]
  if enc[2] or dec[2]:
    if enc[1] == dec[1] and enc[0] == dec[0]:
      ref["vit_overrides"] = as_over(enc[1])
    else:
      if enc[2]:
        ref["encoder_vit_overrides"] = as_over(enc[1])
      if dec[2]:
        ref["decoder_vit_overrides"] = as_over(dec[1])
  return ref
