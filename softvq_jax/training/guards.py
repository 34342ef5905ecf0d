"""Non-finite guards: no state that is not finite is ever saved, and what to do on divergence.

`config.nan_policy`:
- "stop" (default): the first non-finite loss (checked on log steps) or state (checked in-jit on
  every save step, one reduction over the state) stops the run with the real last good step;
- "skip_step": every step checks its update in-jit and keeps the previous params, optimizer and
  loss state when it is not finite (the step counter and data still advance);
  `MAX_CONSECUTIVE_SKIPS` skipped steps in a row stop the run as "stop" does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from softvq_jax.utils.errors import UserError

NAN_POLICIES = ("stop", "skip_step")
MAX_CONSECUTIVE_SKIPS = 20
SKIPPED = "nonfinite_skipped"  # the per-step metric under skip_step (1.0 = update dropped)


class NonFiniteError(UserError):
  """Training diverged: the message names the step, the last good checkpoint and the way on."""


def all_finite(tree: Any) -> jax.Array:
  """A bool scalar: every float leaf of `tree` is finite (integer leaves are ignored)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def skip_nonfinite(step_fn: Callable) -> Callable:
  """Wraps a pure train step: a non-finite update leaves the state as it was (step + 1)."""

  def guarded(state, *args):
    new_state, metrics = step_fn(state, *args)
    ok = all_finite(new_state) & all_finite(metrics)
    kept = state.replace(step=new_state.step)
    out = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, kept)
    metrics = {k: jnp.where(ok, v, jnp.nan) for k, v in metrics.items()}
    return out, {**metrics, SKIPPED: 1.0 - ok.astype(jnp.float32)}

  return guarded


def divergence_message(what: str, step: int, last_good: int | None, directory: Any) -> str:
  """What diverged, where the last good (finite) checkpoint is, and how to go on."""
  where = (
    f"the last good checkpoint is step {last_good} in {directory} (all checkpoints on disk are "
    "finite: a non-finite state is never saved)"
    if last_good is not None
    else "no checkpoint was saved yet"
  )
  return (
    f"non-finite {what} at step {step}; nothing was saved from it and {where}. To go on, rerun "
    "the same command with a lower --config.optim.lr (resuming from there), or with "
    "--config.nan_policy=skip_step to drop non-finite updates; "
    "--config.ckpt.restore_step=N resumes from an older step"
  )
