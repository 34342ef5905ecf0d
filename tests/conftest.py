"""Test setup: 8 forced CPU devices (for sharding tests) before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  # Tests are compile-bound on CPU; unoptimised XLA code compiles ~6x faster.
  " --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib  # noqa: E402

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_dir():
  return FIXTURES


# The longest files first, so that `pytest -n 2 --dist loadfile` (the README's test command)
# starts them at once on different workers instead of finding two of them at the end.
_LONG_FIRST = (
  "test_multiprocess.py",
  "test_recovery.py",
  "test_tokenizer_objective.py",
  "test_quantizer_study.py",
  "test_readme.py",
  "test_imagenet.py",
  "test_generator_trainer.py",
  "test_tokenizer_trainer.py",
)


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(_LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
