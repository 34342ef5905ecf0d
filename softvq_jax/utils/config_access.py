"""Reading config sections that may be ConfigDicts, plain dicts (exported model dirs) or objects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
  """cfg[key] or `default` for a plain dict, a ConfigDict or an attribute object."""
  if isinstance(cfg, Mapping) or hasattr(cfg, "get"):  # dict or ConfigDict
    return cfg.get(key, default)
  return getattr(cfg, key, default)


def cfg_at(cfg: Any, dotted: str) -> Any:
  """The value at a dotted key ("loss.disc.dino_path") of nested sections."""
  for part in dotted.split("."):
    cfg = cfg[part]
  return cfg
