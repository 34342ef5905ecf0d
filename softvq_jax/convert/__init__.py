"""Converters between the reference (PyTorch/timm/safetensors) layouts and Flax parameters.

Public API (see `softvq_jax.convert.tokenizer`, `.reference_config`, `.dinov2_init`):
`tokenizer_from_reference`, `tokenizer_to_reference`, `reference_to_model_config`,
`model_to_reference_config`, `init_encoder_from_dinov2`; `sit_from_reference` is resolved lazily
from `softvq_jax.convert.sit` when that module exists. CLI: `python -m softvq_jax.convert -h`.
"""

from __future__ import annotations

import importlib

from softvq_jax.convert.reference_config import model_to_reference_config, reference_to_model_config
from softvq_jax.convert.tokenizer import tokenizer_from_reference, tokenizer_to_reference

__all__ = [
  "init_encoder_from_dinov2",
  "model_to_reference_config",
  "reference_to_model_config",
  "sit_from_reference",
  "tokenizer_from_reference",
  "tokenizer_to_reference",
]

_LAZY = {
  "init_encoder_from_dinov2": "softvq_jax.convert.dinov2_init",
  "sit_from_reference": "softvq_jax.convert.sit",
}


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
