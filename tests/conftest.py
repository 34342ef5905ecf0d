"""Test setup: 8 forced CPU devices (for sharding tests) before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  # Tests are compile-bound on CPU; unoptimised XLA code compiles ~6x faster.
  " --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent XLA compilation cache for the run, shared through the environment by the
# pytest-xdist workers and the processes tests start: the suite compiles the same tiny programs
# many times over (every trainer test, resume and subprocess), which then load instead. Made by
# the first process (the xdist controller), removed by it at the end; a user's own cache is kept.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  import tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="softvq_jax_tests_xla_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"

import pathlib  # noqa: E402
import shutil  # noqa: E402

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


def pytest_unconfigure(config):
  if _OWN_CACHE and not hasattr(config, "workerinput"):  # the process that made the cache
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
