"""A loss as a list of named, weighted terms `(name, weight, value)`, summed in list order.

The generator and discriminator objectives (tokenizer.py, adversarial.py) build such lists, so a
new term is one entry and every term is logged under its name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

Term = tuple[str, Any, jax.Array]  # (metric name, weight, unweighted value)


def weighted_sum(terms: Sequence[Term]) -> jax.Array:
  """sum(weight * value) over the terms, left to right."""
  if not terms:
    raise ValueError("weighted_sum: no terms")
  total = None
  for _, w, v in terms:
    total = w * v if total is None else total + w * v
  return total
