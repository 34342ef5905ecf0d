"""Reference SiT / DiT (PyTorch state dict, HF config.json) <-> Flax generator params.

    model, params = sit_from_reference(config, state_dict)
    state_dict = sit_to_reference(params, model)
    python -m softvq_jax.convert sit --config config.json --weights model.safetensors --out DIR

`config` holds the HF SiT/DiT config.json fields (`in_channels`, `input_size`, `depth`,
`hidden_size`, `num_heads`, `num_classes`, `class_dropout_prob`, `qk_norm`, `vae_1d`,
`patch_size`, `mlp_ratio`, `learn_sigma`), at the top level or under `model_kwargs`. The fixed
`pos_embed` buffer is checked against the computed sin/cos table and dropped (written back on the
way out). The model dir's config.json holds `{"model": generator_config(model), ...}`.

Refused (weights/checks.py), naming the file when read from one: config keys the reference SiT /
DiT constructors do not take (with the closest known key), values of the wrong type, tensors that
are not float or hold NaN/Inf, missing/unknown keys and shapes. `reference_config(model)` is the
HF config.json of a model (what `sit-to-reference` writes beside the weights).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from softvq_jax.models.sit import MODELS, SiT
from softvq_jax.weights import checks, io

Path = tuple[str, ...]
# Model fields stored in (and rebuilt from) a model dir's config.json.
GENERATOR_FIELDS = (
  "input_size",
  "in_channels",
  "patch_size",
  "hidden_size",
  "depth",
  "num_heads",
  "mlp_ratio",
  "num_classes",
  "class_dropout_prob",
  "learn_sigma",
  "qk_norm",
)


# The constructor arguments of the reference SiT (REPA-style, modelling/sit.py, including its
# block kwargs) and DiT (modelling/dit.py), with their value kinds (checks.KINDS): what an HF
# config.json (PyTorchModelHubMixin) or a fixture's `model_kwargs` may hold.
REFERENCE_KINDS = {
  "input_size": "int",
  "in_channels": "int",
  "patch_size": "int",
  "hidden_size": "int",
  "decoder_hidden_size": "int",
  "depth": "int",
  "num_heads": "int",
  "mlp_ratio": "float",
  "num_classes": "int",
  "class_dropout_prob": "float",
  "learn_sigma": "bool",
  "qk_norm": "bool",
  "vae_1d": "bool",
  "path_type": "str",
  "use_cfg": "bool",
  "z_dims": "list",
  "projector_dim": "int",
  "encoder_depth": "int",
  "fused_attn": "bool",
  "flash_attn": "bool",
  "tags": "list",
  "repo_url": "str",
  "license": "str",
}


def _fields(config: Mapping[str, Any]) -> dict:
  """The constructor fields of `config` (top level, or a fixture's `model_kwargs`), checked."""
  nested = isinstance(config.get("model_kwargs"), Mapping)
  c = checks.keep_source(dict(config["model_kwargs"] if nested else config), config)
  checks.check_known_keys(c, REFERENCE_KINDS, "reference SiT/DiT config")
  checks.check_types(c, REFERENCE_KINDS, "reference SiT/DiT config")
  return c


def model_from_reference_config(config: Mapping[str, Any], kind: str | None = None, **kw) -> SiT:
  """A SiT (or DiT when `learn_sigma` is in the config, or kind="dit") from HF config fields."""
  c = _fields(config)
  missing = [
    k for k in ("in_channels", "input_size", "depth", "hidden_size", "num_heads") if k not in c
  ]
  if missing:
    raise checks.ReferenceConfigError(
      f"{checks.where(c)}reference SiT config lacks {missing} (expected HF SiT config.json fields)"
    )
  if kind is None:
    kind = "dit" if "learn_sigma" in c else "sit"
  vae_1d = bool(c.get("vae_1d", False))
  dec_h = c.get("decoder_hidden_size", c["hidden_size"])
  if dec_h != c["hidden_size"]:
    raise checks.ReferenceConfigError(
      f"{checks.where(c)}decoder_hidden_size {dec_h} != hidden_size {c['hidden_size']}: the "
      "reference final layer only works when they are equal (the SiT-S builders are broken this "
      "way)"
    )
  return MODELS[kind](
    input_size=int(c["input_size"]),
    in_channels=int(c["in_channels"]),
    patch_size=1 if vae_1d else int(c.get("patch_size", 2)),
    hidden_size=int(c["hidden_size"]),
    depth=int(c["depth"]),
    num_heads=int(c["num_heads"]),
    mlp_ratio=float(c.get("mlp_ratio", 4.0)),
    num_classes=int(c.get("num_classes", 1000)),
    class_dropout_prob=float(c.get("class_dropout_prob", 0.1)),
    learn_sigma=bool(c.get("learn_sigma", kind == "dit")),
    qk_norm=bool(c.get("qk_norm", False)),
    **kw,
  )


def generator_config(model: SiT) -> dict:
  """JSON-able `model` description (kind + GENERATOR_FIELDS); see `generator_from_config`."""
  kind = "dit" if type(model).__name__ == "DiT" else "sit"
  return {"kind": kind, **{f: getattr(model, f) for f in GENERATOR_FIELDS}}


def generator_from_config(model_cfg: Mapping[str, Any], **kw) -> SiT:
  """Rebuilds a generator from `generator_config` output; kw sets dtype/remat/attn_impl."""
  cfg = dict(model_cfg)
  kind = cfg.pop("kind", "sit")
  known = {f.name for f in dataclasses.fields(SiT)}
  return MODELS[kind](**{k: v for k, v in cfg.items() if k in known}, **kw)


def key_map(model: SiT) -> list[tuple[Path, str, str]]:
  """[(flax param path, reference key, layout kind)] for `model`."""
  out: list[tuple[Path, str, str]] = []

  def lin(path: Path, key: str, kind: str = "linear"):
    out.extend([((*path, "kernel"), f"{key}.weight", kind), ((*path, "bias"), f"{key}.bias", "id")])

  if model.patch_size == 1:
    lin(("x_embedder",), "x_embedder")
  else:
    lin(("x_embedder",), "x_embedder.proj", "conv")
  lin(("t_embedder", "mlp_0"), "t_embedder.mlp.0")
  lin(("t_embedder", "mlp_2"), "t_embedder.mlp.2")
  out.append((("y_embedder", "embedding_table"), "y_embedder.embedding_table.weight", "id"))
  for i in range(model.depth):
    b, p = f"blocks.{i}.", (f"blocks_{i}",)
    for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
      lin((*p, *name.split(".")), b + name)
    if model.qk_norm:
      for n in ("q_norm", "k_norm"):
        out.append(((*p, "attn", n, "scale"), f"{b}attn.{n}.weight", "id"))
        out.append(((*p, "attn", n, "bias"), f"{b}attn.{n}.bias", "id"))
    lin((*p, "adaLN_modulation"), b + "adaLN_modulation.1")
  lin(("final_layer", "linear"), "final_layer.linear")
  lin(("final_layer", "adaLN_modulation"), "final_layer.adaLN_modulation.1")
  return out


def sit_from_reference(
  config: Mapping[str, Any], state_dict: Mapping[str, Any], kind: str | None = None, **model_kw
):
  """HF SiT/DiT config fields + PyTorch-layout state dict -> (model, params).

  Raises KeyError listing missing/unexpected keys and ValueError listing shape mismatches.
  `model_kw` sets non-checkpoint fields (dtype, remat, attn_impl).
  """
  model = model_from_reference_config(config, kind, **model_kw)
  entries = key_map(model)
  sd = io.strip_wrapper_prefix(state_dict)
  src = checks.where(sd)
  want = {k for _, k, _ in entries} | {"pos_embed"}
  missing, unexpected = sorted(want - set(sd) - {"pos_embed"}), sorted(set(sd) - want)
  if missing or unexpected:
    raise checks.WeightKeyError(
      f"{src}state dict does not match the SiT config: missing {missing}, unexpected {unexpected}"
    )
  if "pos_embed" in sd:
    pe = checks.float_tensor(sd["pos_embed"], "pos_embed", sd).reshape(-1, model.hidden_size)
    ours = model.pos_embed()
    if pe.shape != ours.shape or not np.allclose(pe, ours, atol=1e-5):
      raise checks.WeightValueError(
        f"{src}pos_embed {np.shape(sd['pos_embed'])} differs from the fixed sin/cos table "
        f"{ours.shape} (wrong input_size / vae_1d / hidden_size in the config?)"
      )
  bad, flat = [], {}
  for path, key, kind_ in entries:
    flat[path] = io.TO_FLAX[kind_](checks.float_tensor(sd[key], key, sd))
  abstract = io.flatten(abstract_params(model))
  for path, arr in flat.items():
    if tuple(abstract[path].shape) != arr.shape:
      bad.append(f"{'/'.join(path)}: got {arr.shape}, need {tuple(abstract[path].shape)}")
  if bad:
    raise checks.WeightValueError(
      f"{src}shape mismatch between the state dict and the config:\n  " + "\n  ".join(bad)
    )
  params = {p: jnp.asarray(a, dtype=abstract[p].dtype) for p, a in flat.items()}
  logging.info("converted %d reference tensors into %s", len(entries), type(model).__name__)
  return model, io.nest(params)


def abstract_params(model: SiT):
  """ShapeDtypeStructs of `model`'s params (no allocation)."""
  import jax

  if model.patch_size == 1:
    x = jnp.zeros((1, model.input_size, model.in_channels))
  else:
    x = jnp.zeros((1, model.input_size, model.input_size, model.in_channels))
  t, y = jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, y))["params"]


def sit_to_reference(params: Mapping[str, Any], model: SiT) -> dict[str, np.ndarray]:
  """Flax params -> reference state dict (PyTorch layout, with the fixed `pos_embed` buffer)."""
  flat = io.flatten(params)
  entries = key_map(model)
  io.check_paths(flat, (p for p, _, _ in entries), "the model")
  checks.check_finite_tree(flat, "generator params")
  out = {key: io.TO_TORCH[kind](np.asarray(flat[path])) for path, key, kind in entries}
  out["pos_embed"] = model.pos_embed()[None]
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def reference_config(model: SiT) -> dict[str, Any]:
  """The HF config.json fields of the reference SiT / DiT constructor for `model` (the inverse of
  `model_from_reference_config`: a DiT carries `learn_sigma`, a SiT does not)."""
  kind = generator_config(model)["kind"]
  if kind == "sit" and model.learn_sigma:
    raise checks.ReferenceConfigError("the reference SiT has no learn_sigma; export it as a DiT")
  if kind == "dit" and model.qk_norm:
    raise checks.ReferenceConfigError("the reference DiT has no qk_norm; it cannot hold this model")
  out: dict[str, Any] = {
    "input_size": int(model.input_size),
    "in_channels": int(model.in_channels),
    "patch_size": int(model.patch_size),
    "hidden_size": int(model.hidden_size),
    "depth": int(model.depth),
    "num_heads": int(model.num_heads),
    "mlp_ratio": float(model.mlp_ratio),
    "num_classes": int(model.num_classes),
    "class_dropout_prob": float(model.class_dropout_prob),
    "vae_1d": model.patch_size == 1,
  }
  if kind == "dit":
    out["learn_sigma"] = bool(model.learn_sigma)
  else:
    out.update(decoder_hidden_size=int(model.hidden_size), qk_norm=bool(model.qk_norm))
  return out
