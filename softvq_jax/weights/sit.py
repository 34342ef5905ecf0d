"""Reference SiT / DiT (PyTorch state dict, HF config.json) <-> Flax generator params.

    model, params = sit_from_reference(config, state_dict)
    state_dict = sit_to_reference(params, model)
    python -m softvq_jax.convert sit --config config.json --weights model.safetensors --out DIR

`config` holds the HF SiT/DiT config.json fields (`in_channels`, `input_size`, `depth`,
`hidden_size`, `num_heads`, `num_classes`, `class_dropout_prob`, `qk_norm`, `vae_1d`,
`patch_size`, `mlp_ratio`, `learn_sigma`), at the top level or under `model_kwargs`. The fixed
`pos_embed` buffer is checked against the computed sin/cos table and dropped (written back on the
way out). The model dir's config.json holds `{"model": generator_config(model), ...}`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from softvq_jax.models.sit import MODELS, SiT
from softvq_jax.weights import io

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


def _fields(config: Mapping[str, Any]) -> dict:
  return dict(config.get("model_kwargs", config))


def model_from_reference_config(config: Mapping[str, Any], kind: str | None = None, **kw) -> SiT:
  """A SiT (or DiT when `learn_sigma` is in the config, or kind="dit") from HF config fields."""
  c = _fields(config)
  missing = [
    k for k in ("in_channels", "input_size", "depth", "hidden_size", "num_heads") if k not in c
  ]
  if missing:
    raise KeyError(f"reference SiT config lacks {missing} (expected HF SiT config.json fields)")
  if kind is None:
    kind = "dit" if "learn_sigma" in c else "sit"
  vae_1d = bool(c.get("vae_1d", False))
  dec_h = c.get("decoder_hidden_size", c["hidden_size"])
  if dec_h != c["hidden_size"]:
    raise ValueError(
      f"decoder_hidden_size {dec_h} != hidden_size {c['hidden_size']}: the reference final layer "
      "only works when they are equal (the SiT-S builders are broken this way)"
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
  sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}
  want = {k for _, k, _ in entries} | {"pos_embed"}
  missing, unexpected = sorted(want - set(sd) - {"pos_embed"}), sorted(set(sd) - want)
  if missing or unexpected:
    raise KeyError(
      f"state dict does not match the SiT config: missing {missing}, unexpected {unexpected}"
    )
  if "pos_embed" in sd:
    pe = np.asarray(sd["pos_embed"]).reshape(-1, model.hidden_size)
    ours = model.pos_embed()
    if pe.shape != ours.shape or not np.allclose(pe, ours, atol=1e-5):
      raise ValueError(
        f"pos_embed {np.shape(sd['pos_embed'])} differs from the fixed sin/cos table "
        f"{ours.shape} (wrong input_size / vae_1d / hidden_size in the config?)"
      )
  bad, flat = [], {}
  for path, key, kind_ in entries:
    arr = io.TO_FLAX[kind_](np.asarray(sd[key]))
    flat[path] = arr
  abstract = io.flatten(_abstract_params(model))
  for path, arr in flat.items():
    if tuple(abstract[path].shape) != arr.shape:
      bad.append(f"{'/'.join(path)}: got {arr.shape}, need {tuple(abstract[path].shape)}")
  if bad:
    raise ValueError("shape mismatch between the state dict and the config:\n  " + "\n  ".join(bad))
  params = {p: jnp.asarray(a, dtype=abstract[p].dtype) for p, a in flat.items()}
  logging.info("converted %d reference tensors into %s", len(entries), type(model).__name__)
  return model, io.nest(params)


def _abstract_params(model: SiT):
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
  out = {key: io.TO_TORCH[kind](np.asarray(flat[path])) for path, key, kind in entries}
  out["pos_embed"] = model.pos_embed()[None]
  return {k: np.ascontiguousarray(v) for k, v in out.items()}
