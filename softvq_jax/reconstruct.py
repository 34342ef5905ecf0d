"""Alias of `softvq_jax.cli.reconstruct`: `python -m softvq_jax.reconstruct --model=DIR IN OUT`.

Also the one-line Python API: `from softvq_jax.reconstruct import reconstruct` (resolved lazily,
so running this alias as a program does not import the command module twice).
"""

import runpy


def __getattr__(name):
  from softvq_jax.cli import reconstruct as command

  return getattr(command, name)


if __name__ == "__main__":
  runpy.run_module("softvq_jax.cli.reconstruct", run_name="__main__", alter_sys=True)
