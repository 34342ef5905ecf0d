"""FID Inception-v3 weights: pytorch-fid `pt_inception-2015-12-05-6726825d` <-> Flax params.

Converting the published torch file once (needs torch, on any machine):
    import torch, safetensors.torch as st
    sd = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu")
    st.save_file({k: v.contiguous() for k, v in sd.items()}, "pt_inception-2015-12-05.safetensors")
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from softvq_jax.models.frozen.inception import param_shapes
from softvq_jax.weights import checks
from softvq_jax.weights import io as wio

CONFIG_KEY = "eval.inception_path"
WHAT = "FID Inception-v3 weights (pytorch-fid pt_inception-2015-12-05-6726825d)"

_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _torch_key(path: tuple[str, ...]) -> str:
  """Flax param path -> pytorch-fid state-dict key."""
  if path == ("fc_kernel",):
    return "fc.weight"
  if path == ("fc_bias",):
    return "fc.bias"
  *mods, layer, leaf = path
  if layer == "conv" and leaf == "kernel":
    return ".".join(mods + ["conv", "weight"])
  if layer == "bn":
    inv = {v: k for k, v in _BN_NAMES.items()}
    return ".".join(mods + ["bn", inv[leaf]])
  raise KeyError(f"unexpected Inception parameter path {'/'.join(path)}")


def _to_torch_layout(path: tuple[str, ...], x: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel":
    return wio.conv_weight(x)  # HWIO -> OIHW
  if path == ("fc_kernel",):
    return wio.linear_weight(x)  # (2048, 1008) -> (1008, 2048)
  return np.asarray(x)


def _to_flax_layout(path: tuple[str, ...], x: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel":
    return wio.conv_kernel(x)
  if path == ("fc_kernel",):
    return wio.linear_kernel(x)
  return np.asarray(x)


def torch_state_dict(params: Mapping) -> dict[str, np.ndarray]:
  """Flax params -> pytorch-fid `FIDInceptionV3` state dict layout (OIHW convs, fc (1008, 2048))."""
  return {
    _torch_key(p): np.ascontiguousarray(_to_torch_layout(p, np.asarray(v)))
    for p, v in wio.flatten(params).items()
  }


def params_from_torch_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
  """pytorch-fid state dict -> Flax params; every key must be present with its exact shape, as a
  finite float tensor (errors name the file of a state dict read with `io.load_state_dict`)."""
  shapes = wio.flatten(param_shapes())
  src = checks.where(state_dict)
  sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  expected = {_torch_key(p): p for p in shapes}
  missing = sorted(set(expected) - set(sd))
  unexpected = sorted(set(sd) - set(expected))
  if missing or unexpected:
    raise checks.WeightValueError(
      f"{src}{WHAT}: state dict does not match the FID Inception layout; missing "
      f"{len(missing)} keys {missing[:5]}, unexpected {len(unexpected)} keys {unexpected[:5]}"
    )
  flat = {}
  for key, path in expected.items():
    arr = _to_flax_layout(path, checks.float_tensor(sd[key], key, state_dict).astype(np.float32))
    if arr.shape != tuple(shapes[path].shape):
      raise checks.WeightValueError(
        f"{src}{WHAT}: {key} has shape {np.shape(sd[key])}, expected the Flax shape "
        f"{tuple(shapes[path].shape)} after layout conversion"
      )
    flat[path] = arr
  return wio.nest(flat)


def load_inception_params(path: str | os.PathLike) -> dict:
  """Loads the FID Inception weights (.safetensors/.npz, or .pth with torch) as Flax params.

  A missing file raises WeightFileError naming it and the config key `eval.inception_path`.
  """
  sd = wio.load_state_dict(path, WHAT, CONFIG_KEY)
  return params_from_torch_state_dict(sd)
