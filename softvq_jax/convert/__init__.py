"""Alias of `softvq_jax.weights` (the converters' old home; `python -m softvq_jax.convert` works).

New code imports from `softvq_jax.weights`; names resolve lazily, as there.
"""

from softvq_jax.weights import __all__, __getattr__  # noqa: F401
