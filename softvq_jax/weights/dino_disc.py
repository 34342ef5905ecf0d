"""Reference DinoDisc heads (PyTorch state dict) <-> Flax DinoDiscriminator (params, state).

    params, state = dino_disc_from_reference(state_dict)      # state: "spectral", "batch_stats"
    state_dict = dino_disc_to_reference(params, state, num_batches_tracked=n)
    python -m softvq_jax.convert dino-disc --weights disc.safetensors --out DIR

Reference layout (`discriminator_dino.py`; head i < 5 is an nn.Sequential; C = 384, k = 9):
  heads.{i}.0.0      SN-Conv1d(C, C, 1)       -> heads_i/block_conv
  heads.{i}.0.1      SyncBatchNorm(C)         -> heads_i/block_norm
  heads.{i}.1.fn.0   SN-Conv1d(C, C, k)       -> heads_i/res_conv    (inside ResidualBlock.fn)
  heads.{i}.1.fn.1   SyncBatchNorm(C)         -> heads_i/res_norm
  heads.{i}.2        SN-Conv1d(C, 1, 1)       -> heads_i/out_conv
A spectral-norm conv stores `bias`, `weight_orig` (O, I, K: the unnormalised weight, our kernel
(K, I, O) transposed) and the buffers `weight_u` (O,) / `weight_v` (I*K,) (our "spectral" u / v,
same order); with `using_spec_norm=False` just `weight` and `bias`. A BatchNorm stores `weight`,
`bias` (our scale / bias), `running_mean` / `running_var` (our "batch_stats" mean / var) and
`num_batches_tracked` (int64 scalar). The counter has no effect (torch momentum 0.1 is set), so it
is checked and dropped on the way in (`reference_num_batches_tracked` reads it) and written back
on the way out from the `num_batches_tracked` argument. The output loads into a reference
DinoDisc with `load_state_dict(strict=True)` (torch's spectral-norm pre-hook accepts a state dict
without its version metadata when `weight_orig/_u/_v` are present); the round trip is exact.

The frozen DINO trunk is not part of the reference state dict (DinoDisc keeps it in a tuple,
`dino_proxy`, so it is no submodule): its weights come from `loss.disc.dino_path`
(weights/dino.py). Keys under `dino_proxy.` (a variant that registered it) are ignored.

Prefixes: the reference training script saves `vq_loss.discriminator.state_dict()` under the key
"discriminator" of its `.pt` checkpoint (`load_reference_dino_disc` picks it). A flat state dict
of a wrapping module (VQLoss: `discriminator.`; torch.compile: `_orig_mod.`; DDP: `module.`) is
accepted: the one prefix in front of `heads.<i>.` is detected (or given as `prefix=`) and
stripped; keys outside that prefix belong to other modules and are ignored (logged).

Refused (weights/checks.py), naming the file of a state dict read with `io.load_state_dict`: a
tensor that is not float or holds NaN/Inf, a counter that is not an integer scalar, missing /
unknown keys and shapes; on the way out, non-finite params or statistics.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from softvq_jax.models.discriminators.dino_heads import DinoHeads
from softvq_jax.models.frozen.dino import WIDTH
from softvq_jax.weights import checks, io

Path = tuple[str, ...]
WHAT = "reference DINO discriminator (DinoDisc heads)"
NUM_HEADS, KERNEL_SIZE = 5, 9
SPECTRAL, BATCH_STATS = "spectral", "batch_stats"
# (flax module in heads_{i}, reference module inside heads.{i}.), in the reference's order.
MODULES = (
  ("block_conv", "0.0"),
  ("block_norm", "0.1"),
  ("res_conv", "1.fn.0"),
  ("res_norm", "1.fn.1"),
  ("out_conv", "2"),
)
_HEAD_KEY = re.compile(r"^((?:[^.]+\.)*?)heads\.\d+\.")  # prefix: "" or dotted module names
_TRUNK_PREFIX = "dino_proxy."


def key_map(
  num_heads: int = NUM_HEADS, kernel_size: int = KERNEL_SIZE, spectral: bool = True
) -> list[tuple[str, Path, str, str]]:
  """[(collection, flax path, reference key, layout kind)] in the reference's state_dict order.

  Collections: "params", "spectral", "batch_stats"; paths start at the discriminator's "heads".
  `num_batches_tracked` is not listed (see `batch_norm_counters`).
  """
  out = []
  for i in range(num_heads):
    p, r = ("heads", f"heads_{i}"), f"heads.{i}."
    for name, ref in MODULES:
      key, m = r + ref, (*p, name)
      if name.endswith("conv"):
        out += [("params", (*m, "bias"), f"{key}.bias", "id")]
        out += [
          ("params", (*m, "kernel"), f"{key}.weight_orig" if spectral else f"{key}.weight", "conv")
        ]
        if spectral:
          out += [(SPECTRAL, (*m, "u"), f"{key}.weight_u", "id")]
          out += [(SPECTRAL, (*m, "v"), f"{key}.weight_v", "id")]
      else:
        out += [("params", (*m, "scale"), f"{key}.weight", "id")]
        out += [("params", (*m, "bias"), f"{key}.bias", "id")]
        out += [(BATCH_STATS, (*m, "mean"), f"{key}.running_mean", "id")]
        out += [(BATCH_STATS, (*m, "var"), f"{key}.running_var", "id")]
  return out


def batch_norm_counters(num_heads: int = NUM_HEADS) -> list[str]:
  """The reference's `num_batches_tracked` keys (int64 scalars), two BatchNorms per head."""
  norms = [ref for name, ref in MODULES if name.endswith("norm")]
  return [f"heads.{i}.{ref}.num_batches_tracked" for i in range(num_heads) for ref in norms]


def abstract_variables(
  num_heads: int = NUM_HEADS,
  width: int = WIDTH,
  kernel_size: int = KERNEL_SIZE,
  spectral: bool = True,
) -> dict[str, Any]:
  """ShapeDtypeStructs of the DinoDiscriminator variables {"params", "spectral"?, "batch_stats"}."""
  heads = DinoHeads(num_heads=num_heads, kernel_size=kernel_size, spectral=spectral)
  feats = [jnp.zeros((1, 16, width), jnp.float32)] * num_heads
  variables = jax.eval_shape(lambda: heads.init(jax.random.key(0), feats))
  return {c: {"heads": v} for c, v in variables.items()}  # the discriminator's "heads" submodule


def strip_prefix(state_dict: Mapping[str, Any], prefix: str | None = None) -> dict[str, Any]:
  """The DinoDisc's own keys of `state_dict`: the wrapper prefix in front of `heads.<i>.` removed.

  prefix=None detects it (one distinct prefix must precede every `heads.<i>.` key). With a non-empty
  prefix, keys outside it (other modules of the wrapper) are ignored; `dino_proxy.*` always is.
  """
  if prefix is None:
    found = sorted({m.group(1) for k in state_dict if (m := _HEAD_KEY.match(k))})
    if len(found) > 1:
      raise checks.WeightValueError(
        f"{checks.where(state_dict)}{WHAT}: the state dict holds DinoDisc heads under several "
        f"prefixes {found}; pass the one to convert (CLI: --prefix)"
      )
    prefix = found[0] if found else ""
  out, ignored = {}, []
  for k, v in state_dict.items():
    if not k.startswith(prefix):
      ignored.append(k)
      continue
    k = k[len(prefix) :]
    if k.startswith(_TRUNK_PREFIX):
      ignored.append(prefix + k)
      continue
    out[k] = v
  if prefix:
    logging.info("%s: stripped the key prefix %r", WHAT, prefix)
  if ignored:
    logging.info("%s: ignored %d keys outside the heads: %s", WHAT, len(ignored), _show(ignored))
  return checks.keep_source(out, state_dict)


def _show(keys: list[str], n: int = 8) -> list[str]:
  keys = sorted(keys)
  return keys if len(keys) <= n else keys[:n] + [f"... ({len(keys)} in all)"]


def reference_num_batches_tracked(state_dict: Mapping[str, Any], prefix: str | None = None) -> int:
  """The BatchNorms' `num_batches_tracked` (their maximum; warns when they differ), 0 if absent."""
  sd = strip_prefix(state_dict, prefix)
  values = [
    checks.integer_scalar(v, k, sd) for k, v in sd.items() if k.endswith(".num_batches_tracked")
  ]
  if values and min(values) != max(values):
    logging.warning("%s: num_batches_tracked differs between layers %s", WHAT, sorted(set(values)))
  return max(values, default=0)


def dino_disc_from_reference(
  state_dict: Mapping[str, Any],
  *,
  width: int = WIDTH,
  num_heads: int = NUM_HEADS,
  kernel_size: int = KERNEL_SIZE,
  spectral: bool | None = None,
  prefix: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reference DinoDisc state dict (numpy, PyTorch layout) -> (params, state) of our discriminator.

  `state` = {"spectral": u/v, "batch_stats": running mean/var}, as `init_discriminator` returns
  it. The defaults are the reference's (384 wide = the ViT-S/16 trunk, 5 heads, k = 9);
  `spectral=None` reads `using_spec_norm` off the keys (`weight_orig` present). Raises KeyError
  listing missing and unknown keys together and ValueError listing every shape mismatch.
  """
  sd = strip_prefix(state_dict, prefix)
  src = checks.where(sd)
  if spectral is None:
    spectral = any(k.endswith(".weight_orig") for k in sd) or not sd
  entries = key_map(num_heads, kernel_size, spectral)
  counters = batch_norm_counters(num_heads)
  want = {k for *_, k, _ in entries} | set(counters)
  missing, unknown = sorted(want - set(sd)), sorted(set(sd) - want)
  dims = f"num_heads={num_heads}, width={width}, kernel_size={kernel_size}, spectral={spectral}"
  if missing or unknown:
    raise checks.WeightKeyError(
      f"{src}{WHAT} state dict does not match ({dims}): "
      + (f"missing keys {_show(missing)}" if missing else "")
      + ("; " if missing and unknown else "")
      + (f"unknown keys {_show(unknown)}" if unknown else "")
    )
  abstract = {
    c: io.flatten(v) for c, v in abstract_variables(num_heads, width, kernel_size, spectral).items()
  }
  flat: dict[str, dict] = {c: {} for c in abstract}
  # torch loads a (1,) counter into its 0-d buffer too (numpy writers often produce one)
  bad = [f"{k} {np.shape(sd[k])} needs ()" for k in counters if np.shape(sd[k]) not in ((), (1,))]
  for k in counters:
    if np.shape(sd[k]) in ((), (1,)):
      checks.integer_scalar(sd[k], k, sd)
  for coll, path, key, kind in entries:
    w = checks.float_tensor(sd[key], key, sd)
    arr = io.TO_FLAX[kind](w)
    need = abstract[coll][path]
    if arr.shape != tuple(need.shape):
      torch_need = io.TO_TORCH[kind](np.zeros(need.shape, np.int8)).shape
      bad.append(f"{key} {tuple(w.shape)} needs {tuple(torch_need)} (-> {coll}/{'/'.join(path)})")
      continue
    flat[coll][path] = jnp.asarray(arr, dtype=need.dtype)
  if bad:
    raise checks.WeightValueError(f"{src}{WHAT}: shape mismatch ({dims}):\n  " + "\n  ".join(bad))
  if {c: set(v) for c, v in flat.items()} != {c: set(v) for c, v in abstract.items()}:
    raise RuntimeError("DinoDisc key map does not cover the variables; please report")
  logging.info("converted %d %s tensors", len(entries), WHAT)
  variables = {c: io.nest(v) for c, v in flat.items()}
  return variables.pop("params"), variables


def dino_disc_to_reference(
  params: Mapping[str, Any], state: Mapping[str, Any], *, num_batches_tracked: int = 0
) -> dict[str, np.ndarray]:
  """(params, state) of our discriminator -> the reference DinoDisc state dict (numpy).

  The sizes (heads, width, k, spectral norm on/off) are read off the trees, which must be exactly
  a DinoDiscriminator's. Float tensors are float32; every `num_batches_tracked` is an int64
  scalar set to `num_batches_tracked` (e.g. `reference_num_batches_tracked` of the source).
  """
  state = dict(state)
  heads = params.get("heads", {}) if isinstance(params, Mapping) else {}
  num_heads = len([k for k in heads if re.fullmatch(r"heads_\d+", k)])
  try:
    width = int(np.shape(heads["heads_0"]["block_norm"]["scale"])[0])
    kernel_size = int(np.shape(heads["heads_0"]["res_conv"]["kernel"])[0])
  except (KeyError, TypeError, IndexError) as e:
    raise checks.WeightKeyError(
      f"params are not a DinoDiscriminator's (no heads/heads_0/...): {e}"
    ) from e
  spectral = SPECTRAL in state
  abstract = abstract_variables(num_heads, width, kernel_size, spectral)
  given = {"params": params, **state}
  miss, extra, bad = [], [], []
  for coll in sorted(set(abstract) | set(given)):
    a = io.flatten(abstract.get(coll, {}))
    g = io.flatten(given.get(coll, {}))
    miss += [f"{coll}/{'/'.join(p)}" for p in sorted(set(a) - set(g))]
    extra += [f"{coll}/{'/'.join(p)}" for p in sorted(set(g) - set(a))]
    for p in sorted(set(a) & set(g)):
      if np.shape(g[p]) != tuple(a[p].shape):
        bad.append(f"{coll}/{'/'.join(p)}: got {np.shape(g[p])}, need {tuple(a[p].shape)}")
  if miss or extra:
    raise checks.WeightKeyError(
      f"params/state do not match a DinoDiscriminator (num_heads={num_heads}, width={width}, "
      f"kernel_size={kernel_size}, spectral={spectral}): missing {_show(miss)}, "
      f"unexpected {_show(extra)}"
    )
  if bad:
    raise checks.WeightValueError("DinoDiscriminator shape mismatch:\n  " + "\n  ".join(bad))
  flat = {c: io.flatten(v) for c, v in given.items()}
  for coll, tree in flat.items():
    checks.check_finite_tree(tree, f"DinoDiscriminator {coll}")
  out: dict[str, np.ndarray] = {}
  for coll, path, key, kind in key_map(num_heads, kernel_size, spectral):
    out[key] = io.TO_TORCH[kind](np.asarray(flat[coll][path], np.float32))
    if key.endswith(".running_var"):  # BatchNorm buffers end with the counter, as in torch
      out[key.replace(".running_var", ".num_batches_tracked")] = np.asarray(
        num_batches_tracked, np.int64
      )
  return {k: np.require(v, requirements="C") for k, v in out.items()}  # keeps 0-d scalars 0-d


# The reference training checkpoint keeps the discriminator under "discriminator".
WRAPPERS = ("discriminator", "state_dict", "module")


def select_state_dict(obj: Any) -> Mapping[str, Any]:
  """The discriminator's state dict inside a loaded reference `.pt` object.

  A training checkpoint {"model", "discriminator", "optimizer", ...} -> its "discriminator"; a
  {"state_dict" | "module": ...} wrapper -> its content; a state dict as is.
  """
  return io.unwrap_state_dict(obj, WRAPPERS)


def load_reference_dino_disc(
  path: str | os.PathLike, config_key: str = "--weights"
) -> dict[str, np.ndarray]:
  """{key: np.ndarray} from .safetensors / .npz, or (torch installed) a .pt/.pth state dict or
  reference training checkpoint (its "discriminator" entry is taken)."""
  return io.load_state_dict(path, WHAT, config_key, wrappers=WRAPPERS)
