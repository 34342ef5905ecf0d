"""timm-layout ViT state dicts (numpy, PyTorch layout) -> our Flax ViT parameter trees.

Shared by the frozen DINO ViT-S/16 trunk and the DINOv2 teacher: the key check (missing /
unexpected / wrong shape, with the file and the config key in the message), the rename +
transpose of patch embedding, cls/register tokens, position embedding and blocks (each tensor
checked to be float and finite), and random stand-ins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from softvq_jax.weights import checks, io
from softvq_jax.weights.tokenizer import vit_key_map

Path = tuple[str, ...]


def block_entries(depth: int, layerscale: bool, final_norm: bool) -> list[tuple[Path, str, str]]:
  """[(flax path, timm key, layout)] for blocks (and the final norm) of a timm ViT."""
  out = []
  for path, key, kind in vit_key_map("", (), depth):
    if not layerscale and path[-1] == "gamma":
      continue
    if not final_norm and path[0] == "norm":
      continue
    out.append((path, key, kind))
  return out


def check_keys(
  sd: Mapping[str, Any],
  want: Iterable[str],
  ignore_prefixes: Iterable[str],
  what: str,
  config_key: str,
) -> None:
  """Raises WeightKeyError listing missing and unexpected keys (ignored prefixes are allowed)."""
  want = set(want)
  ignore = tuple(ignore_prefixes)
  missing = sorted(want - set(sd))
  unexpected = sorted(k for k in sd if k not in want and not k.startswith(ignore))
  if missing or unexpected:
    show = lambda ks: ks if len(ks) <= 8 else ks[:8] + [f"... ({len(ks)} in all)"]
    raise checks.WeightKeyError(
      f"{checks.where(sd)}{what} (config key `{config_key}`): the state dict does not have the "
      f"expected timm key layout: missing {show(missing)}, unexpected {show(unexpected)}"
    )


def to_tree(
  sd: Mapping[str, np.ndarray], entries: Iterable[tuple[Path, str, str]]
) -> dict[str, Any]:
  """Nested dict of float32 arrays from (path, key, kind) entries (kind: id / linear / conv);
  WeightValueError for a tensor that is not float or not finite."""
  tree: dict[str, Any] = {}
  for path, key, kind in entries:
    v = checks.float_tensor(sd[key], key, sd)
    if kind == "linear":
      v = io.linear_kernel(v)
    elif kind == "conv":
      v = io.conv_kernel(v)
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = np.ascontiguousarray(v, dtype=np.float32)
  return tree


def check_shapes(tree: Any, expected: Any, what: str, config_key: str, source: Any = None) -> None:
  """Raises WeightValueError on the first parameter whose shape differs from `expected` (same
  tree), naming the file of `source` (the state dict the tree came from)."""
  src = checks.where(source)

  def walk(a, b, path):
    if isinstance(b, Mapping):
      for k in b:
        if k not in a:
          where = "/".join(path + (k,))
          raise checks.WeightKeyError(
            f"{src}{what} (config key `{config_key}`): no value for {where}"
          )
        walk(a[k], b[k], path + (k,))
      return
    if tuple(np.shape(a)) != tuple(np.shape(b)):
      raise checks.WeightValueError(
        f"{src}{what} (config key `{config_key}`): {'/'.join(path)} has shape "
        f"{tuple(np.shape(a))}, expected {tuple(np.shape(b))} (wrong model variant?)"
      )

  walk(tree, expected, ())


def random_like(shapes: Any, seed_key) -> Any:
  """Random float32 stand-ins N(0, 0.02) (LayerNorm scales 1) with the shapes of `shapes`."""
  import jax

  seed = int(jax.random.randint(seed_key, (), 0, 2**31 - 1))
  rs = np.random.RandomState(seed)

  def leaf(path, s):
    if str(getattr(path[-1], "key", path[-1])) == "scale":
      return np.ones(s.shape, np.float32)
    return (0.02 * rs.standard_normal(s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, shapes)
