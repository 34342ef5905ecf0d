"""Loaders for the published LPIPS-VGG16 weight files -> the Flax {"vgg", "lin"} params.

VGG16 ImageNet trunk (config key `loss.lpips_vgg_path`), either layout:
  torchvision `vgg16-397923af.pth` / timm `vgg16.tv_in1k` model.safetensors:
    features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight (O, I, 3, 3) / .bias (O,)
    (classifier.* / pre_logits.* / head.* are ignored);
  a full LPIPS state dict (taming / richzhang `LPIPS().state_dict()`):
    net.slice{1..5}.{idx}.weight / .bias with the same torchvision indices.
LPIPS heads (config key `loss.lpips_lin_path`): richzhang PerceptualSimilarity v0.1 / taming
`vgg.pth`: lin{0..4}.model.1.weight (1, C, 1, 1) (`model.0` when saved without dropout).
A full LPIPS state dict holds both; then `loss.lpips_vgg_path` may be left empty.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from softvq_jax.models.frozen.vgg import LPIPS, SCALE, SHIFT, TAP_CHANNELS, VGG16_CONVS
from softvq_jax.weights import checks
from softvq_jax.weights import io as wio

VGG_CONFIG_KEY = "loss.lpips_vgg_path"
LIN_CONFIG_KEY = "loss.lpips_lin_path"
VGG_WHAT = "VGG16 ImageNet weights for LPIPS (torchvision vgg16-397923af / timm vgg16.tv_in1k)"
LIN_WHAT = "LPIPS linear heads (PerceptualSimilarity v0.1 / taming vgg.pth)"
LAYOUTS = ("torchvision", "timm", "lpips_lin", "lpips_full")
# torchvision features index ranges of the LPIPS slices (taming `vgg16.slice1..5`).
_SLICE_STARTS = (0, 4, 9, 16, 23)


def _slice_of(idx: int) -> int:
  return max(s for s, start in enumerate(_SLICE_STARTS, 1) if idx >= start)


def _vgg_key(idx: int, kind: str, layout: str) -> str:
  if layout == "lpips_full":
    return f"net.slice{_slice_of(idx)}.{idx}.{kind}"
  return f"features.{idx}.{kind}"


def _expected_vgg(layout: str) -> dict[str, tuple[str, str, tuple[int, ...]]]:
  """torch key -> (flax conv name, 'kernel'|'bias', torch shape)."""
  out = {}
  for name, idx, cin, cout in VGG16_CONVS:
    out[_vgg_key(idx, "weight", layout)] = (name, "kernel", (cout, cin, 3, 3))
    out[_vgg_key(idx, "bias", layout)] = (name, "bias", (cout,))
  return out


def _check(sd: Mapping, expected: Mapping[str, tuple], what: str, source: str) -> None:
  missing = [k for k in expected if k not in sd]
  bad = [
    f"{k} {tuple(np.shape(sd[k]))} (expected {expected[k][-1]})"
    for k in expected
    if k in sd and tuple(np.shape(sd[k])) != tuple(expected[k][-1])
  ]
  if missing or bad:
    raise checks.WeightValueError(
      f"{what}: {source} does not match the expected layout; missing {len(missing)} keys "
      f"{missing[:6]}{' ...' if len(missing) > 6 else ''}; wrong shape {len(bad)}: {bad[:6]}."
    )


def has_vgg(sd: Mapping) -> bool:
  """Whether a state dict holds a VGG16 trunk in either supported layout."""
  return "features.0.weight" in sd or "net.slice1.0.weight" in sd


def vgg_params_from_state_dict(sd: Mapping, source: str = "state dict") -> dict:
  """torchvision/timm `features.*` or LPIPS `net.slice*` state dict -> VGG16Features params."""
  layout = "lpips_full" if "net.slice1.0.weight" in sd else "torchvision"
  if not has_vgg(sd):
    keys = sorted(sd)[:5]
    raise checks.WeightValueError(
      f"{VGG_WHAT}: {source} holds no VGG16 trunk: expected features.0.weight ... (torchvision /"
      f" timm) or net.slice1.0.weight ... (full LPIPS state dict); its first keys are {keys}."
    )
  expected = _expected_vgg(layout)
  _check(sd, expected, VGG_WHAT, source)
  params: dict = {}
  for key, (name, kind, _) in expected.items():
    arr = checks.float_tensor(sd[key], key, source).astype(np.float32)
    params.setdefault(name, {})[kind] = wio.conv_kernel(arr) if kind == "kernel" else arr
  return params


def _lin_key(i: int, sd: Mapping) -> str:
  alt = f"lin{i}.model.0.weight"  # saved with use_dropout=False
  return alt if alt in sd and f"lin{i}.model.1.weight" not in sd else f"lin{i}.model.1.weight"


def lin_params_from_state_dict(sd: Mapping, source: str = "state dict") -> dict:
  """`lin{i}.model.1.weight` (1, C, 1, 1) -> LinHeads params {lin{i}: {kernel: (C, 1)}}."""
  expected = {
    _lin_key(i, sd): (f"lin{i}", "kernel", (1, c, 1, 1)) for i, c in enumerate(TAP_CHANNELS)
  }
  _check(sd, expected, LIN_WHAT, source)
  return {
    name: {"kernel": checks.float_tensor(sd[key], key, source).astype(np.float32)[:, :, 0, 0].T}
    for key, (name, _, _) in expected.items()
  }


def lpips_param_shapes() -> dict:
  """The LPIPS Flax parameter tree as ShapeDtypeStructs (no allocation)."""
  x = jnp.zeros((1, 16, 16, 3), jnp.float32)
  return jax.eval_shape(lambda: LPIPS().init(jax.random.key(0), x, x))["params"]


def random_lpips_params(key: jax.Array | int = 0) -> dict:
  """Random LPIPS params of the exact shapes (numpy float32, drawn with numpy: fast on CPU).

  He-normal VGG convs, small biases, non-negative heads (as the trained LPIPS heads are).
  `key` is a jax PRNG key or an int seed.
  """
  seed = int(key) if isinstance(key, int) else np.asarray(jax.random.key_data(key)).ravel()
  rng = np.random.default_rng(seed)
  vgg = {
    name: {
      "kernel": rng.standard_normal((3, 3, cin, cout), np.float32)
      * np.float32(np.sqrt(2 / (9 * cin))),
      "bias": 0.01 * rng.standard_normal((cout,), np.float32),
    }
    for name, _, cin, cout in VGG16_CONVS
  }
  lin = {
    f"lin{i}": {"kernel": rng.uniform(0, 1, (c, 1)).astype(np.float32) / np.float32(np.sqrt(c))}
    for i, c in enumerate(TAP_CHANNELS)
  }
  return {"vgg": vgg, "lin": lin}


def torch_state_dict(params: Mapping, layout: str, extras: bool = True) -> dict[str, np.ndarray]:
  """Flax LPIPS params -> a published key/shape layout (one of LAYOUTS), float32 numpy.

  torchvision / timm: the VGG trunk (+ with `extras` the small classifier / head biases, which
  loaders must ignore); lpips_lin: the heads only (vgg.pth); lpips_full: scaling buffers, trunk
  and heads, as `LPIPS().state_dict()`.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"unknown LPIPS weight layout {layout!r}; choose one of {LAYOUTS}.")
  sd: dict[str, np.ndarray] = {}
  if layout != "lpips_lin":
    for key, (name, kind, _) in _expected_vgg(layout).items():
      arr = np.asarray(params["vgg"][name][kind], np.float32)
      sd[key] = wio.conv_weight(arr) if kind == "kernel" else arr
  if layout in ("lpips_lin", "lpips_full"):
    for i in range(len(TAP_CHANNELS)):
      sd[f"lin{i}.model.1.weight"] = np.asarray(params["lin"][f"lin{i}"]["kernel"]).T[
        :, :, None, None
      ]
  if layout == "lpips_full":
    sd["scaling_layer.shift"] = np.asarray(SHIFT, np.float32)[None, :, None, None]
    sd["scaling_layer.scale"] = np.asarray(SCALE, np.float32)[None, :, None, None]
  if extras and layout == "torchvision":
    sd.update(
      {
        f"classifier.{i}.bias": np.zeros((n,), np.float32)
        for i, n in ((0, 4096), (3, 4096), (6, 1000))
      }
    )
  if extras and layout == "timm":
    sd.update(
      {
        k: np.zeros((n,), np.float32)
        for k, n in (
          ("pre_logits.fc1.bias", 4096),
          ("pre_logits.fc2.bias", 4096),
          ("head.fc.bias", 1000),
        )
      }
    )
  return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def write_random_weights(path: str | os.PathLike, layout: str, seed: int = 0) -> dict:
  """Writes random LPIPS weights in a published layout (.safetensors or .npz); returns the params.

  For tests and for checking a config end to end without the real files (results are meaningless).
  """
  params = random_lpips_params(seed)
  sd = torch_state_dict(params, layout)
  if str(path).endswith(".npz"):
    np.savez(path, **sd)
  else:
    wio.save_safetensors(sd, path)
  return params


def load_lpips_params(
  vgg_path: str | os.PathLike | None,
  lin_path: str | os.PathLike | None,
  *,
  random_init: bool = False,
  key: jax.Array | None = None,
) -> dict:
  """LPIPS params {"vgg", "lin"} (numpy float32) from the published files.

  `lin_path` (`loss.lpips_lin_path`) is vgg.pth or a full LPIPS state dict; `vgg_path`
  (`loss.lpips_vgg_path`) may be empty when the lin file also holds the trunk. A missing file
  raises WeightFileError naming it and its config key. random_init=True returns random weights
  (logging a warning: the perceptual loss is then meaningless).
  """
  if random_init:
    logging.warning(
      "LPIPS perceptual loss uses RANDOM weights (random_init=True): the loss is not the "
      "perceptual metric. Set %s and %s to the published files for real training.",
      VGG_CONFIG_KEY,
      LIN_CONFIG_KEY,
    )
    return random_lpips_params(key if key is not None else 0)
  lin_sd = _load(lin_path, LIN_WHAT, LIN_CONFIG_KEY)
  lin = lin_params_from_state_dict(lin_sd, repr(str(lin_path)))
  if not vgg_path and has_vgg(lin_sd):  # a full LPIPS state dict holds the trunk too
    return {"vgg": vgg_params_from_state_dict(lin_sd, repr(str(lin_path))), "lin": lin}
  vgg_sd = _load(vgg_path, VGG_WHAT, VGG_CONFIG_KEY)
  return {"vgg": vgg_params_from_state_dict(vgg_sd, repr(str(vgg_path))), "lin": lin}


def _load(path, what: str, config_key: str) -> dict:
  try:
    return wio.load_state_dict(path or "", what, config_key)
  except wio.WeightFileError as e:
    raise wio.WeightFileError(
      f"{e} (Or set loss.random_init=True to train with random LPIPS weights: smoke tests only.)"
    ) from e
