"""Every reader and writer of weight files: reference (PyTorch/timm/torchvision) layouts <-> Flax.

Public API: `tokenizer_from_reference`, `tokenizer_to_reference`, `reference_to_model_config`,
`model_to_reference_config`, `init_encoder_from_dinov2`, `sit_from_reference`,
`sit_to_reference`, `dino_disc_from_reference`, `dino_disc_to_reference`; `load_tokenizer`
(exported model dirs and workdirs, weights/pretrained.py). CLI: `python -m softvq_jax.convert -h`.
What every reader refuses (non-float or non-finite tensors, unknown or mistyped config keys,
unparsable files), with errors naming the file and key: weights/checks.py.
This layer imports models, never the reverse.
"""

from __future__ import annotations

import importlib

__all__ = [
  "dino_disc_from_reference",
  "dino_disc_to_reference",
  "init_encoder_from_dinov2",
  "load_tokenizer",
  "model_to_reference_config",
  "reference_to_model_config",
  "sit_from_reference",
  "sit_to_reference",
  "tokenizer_from_reference",
  "tokenizer_to_reference",
]

# Resolved on first use, so importing one converter does not import every model.
_LAZY = {
  "dino_disc_from_reference": "softvq_jax.weights.dino_disc",
  "dino_disc_to_reference": "softvq_jax.weights.dino_disc",
  "init_encoder_from_dinov2": "softvq_jax.weights.dinov2_init",
  "load_tokenizer": "softvq_jax.weights.pretrained",
  "model_to_reference_config": "softvq_jax.weights.reference_config",
  "reference_to_model_config": "softvq_jax.weights.reference_config",
  "sit_from_reference": "softvq_jax.weights.sit",
  "sit_to_reference": "softvq_jax.weights.sit",
  "tokenizer_from_reference": "softvq_jax.weights.tokenizer",
  "tokenizer_to_reference": "softvq_jax.weights.tokenizer",
}


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
