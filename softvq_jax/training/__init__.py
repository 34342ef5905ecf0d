"""Trainers: one generic loop (loop.py) and the tasks that plug into it (`config.trainer`)."""

import importlib

# config.trainer -> module with a `train(config, workdir)` function (imported lazily).
TRAINERS = {
  "tokenizer": "softvq_jax.training.tokenizer",
  "sit": "softvq_jax.training.generator",
  "dit": "softvq_jax.training.generator",
}


def run(config, workdir):
  """Dispatches to the trainer named by `config.trainer`."""
  if config.trainer not in TRAINERS:
    raise ValueError(f"unknown trainer {config.trainer!r}; known: {sorted(TRAINERS)}")
  return importlib.import_module(TRAINERS[config.trainer]).train(config, workdir)
