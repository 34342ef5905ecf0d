"""Reading and writing weight files in their published formats, without torch where possible.

`.safetensors` is read with safetensors' numpy API, `.npz` with numpy; `.pth`/`.pt`/`.bin` (torch
pickles) need torch, which is optional: the error says how to convert them once. Every file is
read and written through `etils.epath`, so weights may live on `gs://` as well as locally.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging
from etils import epath

from softvq_jax.utils.errors import UserError
from softvq_jax.utils.files import atomic_open
from softvq_jax.utils.paths import expand_path, user_path  # noqa: F401 -- io.expand_path
from softvq_jax.weights.checks import FileDict, WeightKeyError


class WeightFileError(UserError, FileNotFoundError):
  """A configured weight file is missing or unreadable; the message names the file and the fix."""


def require_file(path: str | os.PathLike, what: str, config_key: str | None = None) -> epath.Path:
  """Returns `path` as an epath.Path, or raises WeightFileError naming the file, what it is and
  the key."""
  p = expand_path(path) if path else None
  if p is None or not p.is_file():
    where = f" (config key `{config_key}`)" if config_key else ""
    shown = str(path) if path else "<empty path>"
    raise WeightFileError(
      f"{what}: file {shown!r} not found{where}. Nothing is downloaded at run time: download the "
      f"published file yourself and point{where or ' the path'} at it"
      + (f", or set `{config_key}` to a valid path." if config_key else ".")
    )
  return p


# What a Hugging Face repo of the reference (`SoftVQVAE/*`, PyTorchModelHubMixin) holds: the
# constructor's config and the weights, in the order a weights file is looked for.
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def hf_files(config_path, weights_path) -> tuple[epath.Path, epath.Path]:
  """(config, weights) paths from a converter's --config / --weights.

  `weights_path` may be a downloaded Hugging Face repo folder (`huggingface-cli download
  SoftVQVAE/softvq-bl-64 --local-dir DIR`): its `model.safetensors` (else `pytorch_model.bin`)
  is taken. An empty `config_path` means the `config.json` beside the weights, as the repos ship
  it. Missing files raise WeightFileError naming the folder and what it holds.
  """
  w = expand_path(weights_path) if weights_path else None
  if w is not None and w.is_dir():
    found = next((w / n for n in HF_WEIGHTS if (w / n).is_file()), None)
    if found is None:
      held = sorted(p.name for p in w.iterdir())[:10]
      raise WeightFileError(
        f"{w} is a folder without {' or '.join(HF_WEIGHTS)} (it holds {held}); pass the weights "
        "file with --weights"
      )
    w = found
  if not config_path:
    if w is None:
      raise WeightFileError("pass --weights (a weights file or a downloaded Hugging Face folder)")
    c = w.parent / HF_CONFIG
    if not c.is_file():
      raise WeightFileError(
        f"no {HF_CONFIG} beside {w} (a Hugging Face repo ships one next to the weights); pass "
        "the reference config with --config"
      )
    return c, w
  return expand_path(config_path), w or epath.Path(str(weights_path))


# Keys of a torch checkpoint that wrap the state dict, unwrapped in this order. A reference
# training checkpoint holds {"model", "ema", "optimizer", ...}: its EMA weights are taken, as the
# reference's sampling scripts (`find_model`) do.
TORCH_WRAPPERS = ("state_dict", "ema", "model", "module")
# Module-wrapper prefixes in front of every key: DDP (`module.`), torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def load_state_dict(
  path: str | os.PathLike,
  what: str = "weights",
  config_key: str | None = None,
  wrappers: tuple[str, ...] = TORCH_WRAPPERS,
):
  """Loads {key: np.ndarray} from .safetensors, .npz or (with torch installed) .pth/.pt/.bin.

  A torch file's object is unwrapped through `wrappers` (see `unwrap_state_dict`). The result is a
  `checks.FileDict` that remembers `path`, so converters name the file in their errors."""
  p = require_file(path, what, config_key)
  suffix = p.suffix.lower()
  try:
    if suffix == ".safetensors":
      from safetensors.numpy import load

      return FileDict.of(load(p.read_bytes()), p)
    if suffix == ".npz":
      with p.open("rb") as f, np.load(f, allow_pickle=False) as data:
        return FileDict.of({k: data[k] for k in data.files}, p)
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
      return FileDict.of(_load_torch(p, wrappers), p)
  except WeightFileError:
    raise
  except Exception as e:  # corrupt or truncated files
    raise WeightFileError(f"{what}: could not read {str(p)!r} ({type(e).__name__}: {e}).") from e
  raise WeightFileError(
    f"{what}: unsupported weight file extension {suffix!r} for {str(p)!r}; "
    "use .safetensors, .npz, or .pth/.pt/.bin (needs torch)."
  )


def unwrap_state_dict(obj: Any, wrappers: tuple[str, ...] = TORCH_WRAPPERS) -> Mapping[str, Any]:
  """The state dict inside a loaded checkpoint: `obj[w]` for each wrapper key w present, in order
  (e.g. a training checkpoint's "discriminator", then its "state_dict"; "ema" before "model")."""
  for key in wrappers:
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
      others = sorted(k for k in wrappers if k != key and isinstance(obj.get(k), Mapping))
      if others:
        logging.info("checkpoint holds %s: taking %r", [key, *others], key)
      obj = obj[key]
  if not isinstance(obj, Mapping):
    raise ValueError(f"expected a state dict, got {type(obj).__name__}")
  return obj


def strip_wrapper_prefix(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
  """`state_dict` without a DDP / torch.compile prefix (WRAPPER_PREFIXES) shared by every key,
  repeatedly (`module._orig_mod.`); keeps the FileDict source."""
  sd = state_dict
  while sd:
    prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)
    if prefix is None:
      break
    source = getattr(state_dict, "source", "")
    sd = FileDict.of({k[len(prefix) :]: v for k, v in sd.items()}, source)
  return sd


def _load_torch(p: epath.Path, wrappers: tuple[str, ...]) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise WeightFileError(
      f"{str(p)!r} is a torch pickle and torch is not installed. Either `pip install torch` or "
      'convert it once elsewhere: python -c "import torch, safetensors.torch as st; '
      "sd = torch.load('IN.pth', map_location='cpu'); "
      "st.save_file({k: v.contiguous() for k, v in sd.items()}, 'OUT.safetensors')\""
    ) from e
  import argparse
  import contextlib

  safe = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
  with safe([argparse.Namespace]) if safe else contextlib.nullcontext():  # training ckpt "args"
    obj = torch.load(io.BytesIO(p.read_bytes()), map_location="cpu", weights_only=True)
  return {
    k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
    for k, v in unwrap_state_dict(obj, wrappers).items()
    if hasattr(v, "numpy")  # tensors only (checkpoints may hold step counters, names)
  }


def save_safetensors(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
  """Writes {key: array} as safetensors (C-contiguous, 0-d arrays kept 0-d), creating folders,
  atomically, local or gs://."""
  from safetensors.numpy import save

  data = save({k: np.require(v, requirements="C") for k, v in state_dict.items()})
  with atomic_open(user_path(path)) as f:
    f.write(data)


# PyTorch -> Flax layout. Linear weight (out, in) -> kernel (in, out); ConvNd O I *K -> *K I O.
def linear_kernel(w: np.ndarray) -> np.ndarray:
  return np.asarray(w).T


def conv_kernel(w: np.ndarray) -> np.ndarray:
  w = np.asarray(w)
  return np.transpose(w, tuple(range(2, w.ndim)) + (1, 0))


def linear_weight(kernel: np.ndarray) -> np.ndarray:
  """Flax kernel (in, out) -> PyTorch Linear weight (out, in)."""
  return np.asarray(kernel).T


def conv_weight(kernel: np.ndarray) -> np.ndarray:
  """Flax conv kernel (*K, I, O) -> PyTorch (O, I, *K)."""
  k = np.asarray(kernel)
  n = k.ndim - 2
  return np.transpose(k, (n + 1, n) + tuple(range(n)))


# Layout conversions by kind, as converters' key tables name them: PyTorch -> Flax and back.
TO_FLAX = {"id": np.asarray, "linear": linear_kernel, "conv": conv_kernel}
TO_TORCH = {"id": np.asarray, "linear": linear_weight, "conv": conv_weight}


def flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
  """Nested dict -> {path tuple: leaf}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, (*prefix, k)))
    else:
      out[(*prefix, k)] = v
  return out


def nest(flat: Mapping[tuple[str, ...], object]) -> dict:
  """{path tuple: leaf} -> nested dict (inverse of `flatten`)."""
  out: dict = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def check_paths(flat: Mapping[tuple[str, ...], object], expected, what: str) -> None:
  """WeightKeyError naming the missing and unexpected param paths when `flat` does not match
  `what`."""
  paths = set(expected)
  if set(flat) != paths:
    raise WeightKeyError(
      f"params do not match {what}: missing {sorted('/'.join(p) for p in paths - set(flat))}, "
      f"unexpected {sorted('/'.join(p) for p in set(flat) - paths)}"
    )
