"""Reference SoftVQ (PyTorch state dict, SPEC §4) <-> Flax tokenizer params, both directions.

    model, params = tokenizer_from_reference(config, state_dict)
    state_dict = tokenizer_to_reference(params, config)

`config` is the reference config (HF config.json fields, or a fixture json with `model_args` and
`vit_overrides`); arrays are numpy in PyTorch layout (Linear (out, in), Conv OIHW). Unknown or
missing keys are reported together by name; shapes are checked. Dropped on the way in (logged):
the decoder's unused `patch_embed`, the `codebook_used` buffer, `repa_model.*` / `projection.*`
(training-only alignment head) and the RoPE position buffers `freqs_t_x/y` (checked against the
computed grid first). The reverse direction writes those buffers back (zeros for the unused ones)
so `load_state_dict(strict=True)` works in PyTorch; the round trip is bitwise exact.

Refused (weights/checks.py), naming the file when the dicts were read from one: unknown or
mistyped config fields, tensors that are not float or hold NaN/Inf, missing/unknown keys, shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from softvq_jax.models import factory, rope
from softvq_jax.models.tokenizer import Tokenizer
from softvq_jax.weights import checks, io
from softvq_jax.weights.reference_config import (
  MODEL_CLASSES,
  flatten_reference_config,
  reference_to_model_config,
)

Path = tuple[str, ...]
_DROP_PREFIXES = ("repa_model.", "projection.")


def infer_quantizer_name(config: Mapping[str, Any], state_dict: Mapping[str, Any]) -> str:
  """softvq / vq / kl / ae from `model_class` in the config, else from the state-dict keys."""
  ref = flatten_reference_config(config)
  cls = ref.get("model_class")
  if cls:
    if cls not in MODEL_CLASSES:
      raise checks.ReferenceConfigError(
        f"{checks.where(ref)}model_class={cls!r}; known: {sorted(MODEL_CLASSES)}"
      )
    return MODEL_CLASSES[cls]
  if "quantize.embedding" in state_dict:
    return "softvq"
  if "quantize.embedding.weight" in state_dict:
    return "vq"
  dim = int(flatten_reference_config(config)["codebook_embed_dim"])
  w = state_dict.get("quant_conv.weight")
  return "kl" if w is not None and np.shape(w)[0] == 2 * dim else "ae"


def vit_key_map(ref: str, path: Path, depth: int) -> list[tuple[Path, str, str]]:
  """Blocks + final norm of a timm ViT under `ref` (e.g. "encoder.model.") -> Flax `path`."""
  out = []
  for i in range(depth):
    b, p = f"{ref}blocks.{i}.", (*path, f"blocks_{i}")
    for ln in ("norm1", "norm2"):
      out += [
        ((*p, ln, "scale"), f"{b}{ln}.weight", "id"),
        ((*p, ln, "bias"), f"{b}{ln}.bias", "id"),
      ]
    for lin in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
      sub = tuple(lin.split("."))
      out += [((*p, *sub, "kernel"), f"{b}{lin}.weight", "linear")]
      out += [((*p, *sub, "bias"), f"{b}{lin}.bias", "id")]
    out += [((*p, ls, "gamma"), f"{b}{ls}.gamma", "id") for ls in ("ls1", "ls2")]
  out += [((*path, "norm", "scale"), f"{ref}norm.weight", "id")]
  out += [((*path, "norm", "bias"), f"{ref}norm.bias", "id")]
  return out


def key_map(cfg: Mapping[str, Any]) -> list[tuple[Path, str, str]]:
  """[(flax param path, reference key, layout kind)] for our config sections."""
  m, q = cfg["model"], cfg["quantizer"]
  enc_depth = factory.resolve_vit(m["encoder"], "model.encoder")[0]
  dec_depth = factory.resolve_vit(m["decoder"], "model.decoder")[0]
  e, d = ("encoder",), ("decoder",)
  out = [
    ((*e, "latent_tokens"), "encoder.latent_tokens", "id"),
    ((*e, "latent_pos_embed"), "encoder.latent_pos_embed", "id"),
    ((*e, "cls_token"), "encoder.model.cls_token", "id"),
    ((*e, "pos_embed"), "encoder.model.pos_embed", "id"),
    ((*e, "patch_embed", "proj", "kernel"), "encoder.model.patch_embed.proj.weight", "conv"),
    ((*e, "patch_embed", "proj", "bias"), "encoder.model.patch_embed.proj.bias", "id"),
    *vit_key_map("encoder.model.", e, enc_depth),
    (("quant_conv", "kernel"), "quant_conv.weight", "linear"),
    (("quant_conv", "bias"), "quant_conv.bias", "id"),
    (("post_quant_conv", "kernel"), "post_quant_conv.weight", "linear"),
    (("post_quant_conv", "bias"), "post_quant_conv.bias", "id"),
    ((*d, "mask_token"), "decoder.mask_token", "id"),
    ((*d, "latent_pos_embed"), "decoder.latent_pos_embed", "id"),
    ((*d, "pos_embed"), "decoder.model.pos_embed", "id"),
    *vit_key_map("decoder.model.", d, dec_depth),
  ]
  if m.get("dec_cls_token", True):
    out.append(((*d, "cls_token"), "decoder.model.cls_token", "id"))
  if m.get("use_rope", False):
    out += [((*e, "freqs"), "encoder.freqs", "id"), ((*d, "freqs"), "decoder.freqs", "id")]
  if m.get("to_pixel", "linear") == "linear":
    out += [((*d, "to_pixel", "kernel"), "decoder.to_pixel.model.weight", "linear")]
    out += [((*d, "to_pixel", "bias"), "decoder.to_pixel.model.bias", "id")]
  else:  # nn.Sequential indices of the conv layers in the reference ToPixel
    for i, j in enumerate((1, 4, 7, 10, 13)):
      out += [
        ((*d, "to_pixel", f"conv_{i}", "kernel"), f"decoder.to_pixel.model.{j}.weight", "conv")
      ]
      out += [((*d, "to_pixel", f"conv_{i}", "bias"), f"decoder.to_pixel.model.{j}.bias", "id")]
  if q["name"] == "softvq":
    out.append((("quantize", "embedding"), "quantize.embedding", "id"))
  elif q["name"] == "vq":
    out.append((("quantize", "embedding"), "quantize.embedding.weight", "vq"))
  return out


def _rope_buffers(cfg: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The reference's freqs_t_x / freqs_t_y buffers (grid of base_image_size / patch)."""
  out = {}
  for part in ("encoder", "decoder"):
    p = factory.resolve_vit(cfg["model"][part], f"model.{part}")[3]
    t_x, t_y = rope.init_t_xy(int(ref["base_image_size"]) // p, int(ref["base_image_size"]) // p)
    out[f"{part}.freqs_t_x"], out[f"{part}.freqs_t_y"] = t_x, t_y
  return out


def _is_dropped(key: str) -> bool:
  return (
    key.startswith("decoder.model.patch_embed.")
    or key.startswith("quantize.codebook_used")
    or key.startswith(_DROP_PREFIXES)
  )


def tokenizer_from_reference(
  config: Mapping[str, Any], state_dict: Mapping[str, Any]
) -> tuple[Tokenizer, dict[str, Any]]:
  """(model, params) from a reference config and PyTorch-layout state dict (numpy arrays)."""
  state_dict = io.strip_wrapper_prefix(state_dict)
  src = checks.where(state_dict)
  cfg = reference_to_model_config(config, infer_quantizer_name(config, state_dict))
  ref = flatten_reference_config(config)
  model = factory.build_tokenizer(cfg["model"], cfg["quantizer"])
  abstract = io.flatten(factory.abstract_params(model))
  entries = key_map(cfg)
  mapped = {key for _, key, _ in entries}
  if {p for p, _, _ in entries} != set(abstract):  # an internal inconsistency, not user error
    raise RuntimeError("key map does not cover the param tree; please report")

  rope_buf = _rope_buffers(cfg, ref) if cfg["model"]["use_rope"] else {}
  missing = sorted(mapped - set(state_dict))
  dropped, unknown = [], []
  for key in state_dict:
    if key in mapped:
      continue
    if _is_dropped(key):
      dropped.append(key)
    elif key in rope_buf:
      buf = checks.float_tensor(state_dict[key], key, state_dict)
      if not np.array_equal(np.asarray(buf, np.float32), rope_buf[key]):
        raise checks.WeightValueError(
          f"{src}{key} does not match the raster grid of base_image_size="
          f"{ref['base_image_size']} / patch: {np.asarray(state_dict[key])[:8]}..."
        )
      dropped.append(key)
    else:
      unknown.append(key)
  if missing or unknown:
    raise checks.WeightKeyError(
      f"{src}reference state dict does not match the config: "
      + (f"missing keys {missing}" if missing else "")
      + ("; " if missing and unknown else "")
      + (f"unknown keys {sorted(unknown)}" if unknown else "")
    )
  if dropped:
    logging.info(
      "Dropped %d reference keys not used by the Flax model: %s",
      len(dropped),
      ", ".join(sorted(dropped)),
    )
  flat, bad = {}, []
  for path, key, kind in entries:
    w = checks.float_tensor(state_dict[key], key, state_dict)
    arr = w[None] if kind == "vq" else io.TO_FLAX[kind](w)
    want = tuple(abstract[path].shape)
    if arr.shape != want:
      bad.append(f"{key} {tuple(w.shape)} -> {'/'.join(path)} needs {want}")
      continue
    flat[path] = jnp.asarray(arr, dtype=abstract[path].dtype)
  if bad:
    raise checks.WeightValueError(
      f"{src}shape mismatch between the state dict and the config (check vit_overrides / timm "
      "names / num_latent_tokens / codebook sizes):\n  " + "\n  ".join(bad)
    )
  return model, io.nest(flat)


def tokenizer_to_reference(params: Mapping[str, Any], config: Mapping[str, Any]):
  """Flax params -> reference state dict {key: np.ndarray} (PyTorch layout, float32).

  `config` is the reference config the state dict is for (e.g. `model_to_reference_config(ours)`).
  """
  # Stand-in keys so the quantizer is inferred exactly as for a state dict.
  probe = {"quant_conv.weight": np.zeros((np.shape(params["quant_conv"]["kernel"])[-1], 0))}
  if "quantize" in params:
    probe["quantize.embedding"] = None
  name = infer_quantizer_name(config, probe)
  cfg = reference_to_model_config(config, name)
  ref = flatten_reference_config(config)
  flat = io.flatten(params)
  entries = key_map(cfg)
  io.check_paths(flat, (p for p, _, _ in entries), "the config")
  checks.check_finite_tree(flat, "tokenizer params")
  out: dict[str, np.ndarray] = {}
  for path, key, kind in entries:
    a = np.asarray(flat[path])
    if kind == "vq":
      if a.shape[0] != 1:
        raise ValueError("the reference VectorQuantizer has a single codebook (num_codebooks=1)")
      out[key] = a[0]
    else:
      out[key] = io.TO_TORCH[kind](a)
  # Buffers and unused params the reference module has, so strict loading works.
  dec = cfg["model"]["decoder"]
  e_dec, p_dec = factory.resolve_vit(dec, "model.decoder")[1], int(dec["patch_size"])
  out["decoder.model.patch_embed.proj.weight"] = np.zeros((e_dec, 3, p_dec, p_dec), np.float32)
  out["decoder.model.patch_embed.proj.bias"] = np.zeros((e_dec,), np.float32)
  q = cfg["quantizer"]
  if ref.get("codebook_show_usage", True):
    if name == "softvq":
      out["quantize.codebook_used"] = np.zeros((q["num_codebooks"], 65536), np.float32)
    elif name == "vq":
      out["quantize.codebook_used"] = np.zeros((65536,), np.float32)
  if cfg["model"]["use_rope"]:
    out.update(_rope_buffers(cfg, ref))
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def load_reference_tokenizer(config_path, weights_path) -> tuple[Tokenizer, dict, dict]:
  """A released tokenizer (HF config.json + weights file) -> (model, params, model config).

  `weights_path` may be the downloaded Hugging Face repo folder (`config.json` and
  `model.safetensors` inside, see `hf_files`); `config_path` None means the config.json beside
  the weights. The model config is what an exported model dir stores, with the reference config
  under "reference_config". Every error names the file (and key) at fault.
  """
  config_path, weights_path = io.hf_files(config_path, weights_path)
  ref_config = checks.read_config(config_path, "reference tokenizer config", "--config")
  flatten_reference_config(ref_config)  # config errors first, naming the config file
  state_dict = io.load_state_dict(weights_path, "reference tokenizer weights", "--weights")
  state_dict = io.strip_wrapper_prefix(state_dict)
  model, params = tokenizer_from_reference(ref_config, state_dict)
  config = reference_to_model_config(ref_config, infer_quantizer_name(ref_config, state_dict))
  config["reference_config"] = dict(ref_config)
  return model, params, config
