"""`config.trainer` -> the task's `train(config, workdir)`: the one dispatch table."""

from __future__ import annotations

from softvq_jax.training import generator, tokenizer

TRAINERS = {
  "tokenizer": tokenizer.train,
  "sit": generator.train,
  "dit": generator.train,
}


def run(config, workdir: str):
  """Runs the trainer named by `config.trainer`."""
  if config.trainer not in TRAINERS:
    raise ValueError(f"unknown trainer {config.trainer!r}; known: {sorted(TRAINERS)}")
  return TRAINERS[config.trainer](config, workdir)
