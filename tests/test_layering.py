"""The package's layering: every import points down the order stated in the README.

utils (with sharding, checkpointing) < models < weights < objectives < sampling < data <
evaluation < training < config < cli (main, colab and the alias modules). Imports inside
functions count too. A few structural rules ride along: only checkpointing.py imports orbax,
models do no file I/O, and library files stay short.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "softvq_jax"
ORDER = (
  "utils",
  "models",
  "weights",
  "objectives",
  "sampling",
  "data",
  "evaluation",
  "training",
  "config",
  "cli",
)
BASE = {"utils", "sharding", "checkpointing"}
# Top-level programs and the thin aliases that keep old command paths working.
APP = {
  "cli",
  "main",
  "colab",
  "inference",
  "evaluate",
  "sample",
  "export",
  "convert",
  "reconstruct",
}
ALIASES = {"softvq_jax.data.cache_latents", "softvq_jax.data.prepare_imagenet"}
MAX_LINES = 400


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
  """The layer of a `softvq_jax...` module name."""
  parts = module.split(".")[1:]
  if not parts or parts[0] in BASE:
    return "utils"
  if parts[0] in APP or module in ALIASES or any(module.startswith(a + ".") for a in ALIASES):
    return "cli"
  if parts[0] not in ORDER:
    raise AssertionError(f"{module}: top-level name {parts[0]!r} belongs to no layer")
  return parts[0]


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
  """(line, module) of every softvq_jax import in `source`, relative imports resolved.

  `from softvq_jax.x import y` counts as an import of `softvq_jax.x.y` when that is a module of
  the package, else of `softvq_jax.x`.
  """
  out = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "softvq_jax"]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        pkg = module.split(".") if is_package else module.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
      if base.split(".")[0] != "softvq_jax":
        continue
      for a in node.names:
        sub = f"{base}.{a.name}"
        out.append((node.lineno, sub if _is_module(sub) else base))
  return out


def _is_module(name: str) -> bool:
  p = ROOT.parent.joinpath(*name.split("."))
  return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
  """Imports of `module` that point up the layer order (or at a module that does not exist)."""
  here = ORDER.index(layer(module))
  bad = []
  for line, target in imported_modules(source, module, is_package):
    if not _is_module(target):
      bad.append(f"{module}:{line} imports {target}, which does not exist")
    elif ORDER.index(layer(target)) > here:
      bad.append(
        f"{module}:{line} ({layer(module)}) imports {target} ({layer(target)}), a layer above"
      )
  return bad


def library_files():
  return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_import_points_down():
  bad = []
  for path in library_files():
    bad += violations(path.read_text(), module_name(path), path.name == "__init__.py")
  assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_checker_catches_an_upward_import():
  src = "def f():\n  from softvq_jax.training import loop\n"
  assert violations(src, "softvq_jax.models.vit") == [
    "softvq_jax.models.vit:2 (models) imports softvq_jax.training.loop (training), a layer above"
  ]
  assert violations("from softvq_jax.models import vit\n", "softvq_jax.training.loop") == []
  assert violations("from . import pipeline\n", "softvq_jax.data", is_package=True) == []
  assert violations("from ..training import loop\n", "softvq_jax.data.pipeline") != []
  assert "does not exist" in violations("import softvq_jax.nope\n", "softvq_jax.cli.sample")[0]


@pytest.mark.parametrize(
  "module, expected",
  [
    ("softvq_jax.sharding", "utils"),
    ("softvq_jax.checkpointing", "utils"),
    ("softvq_jax.weights.io", "weights"),
    ("softvq_jax.evaluate", "cli"),
    ("softvq_jax.data.cache_latents", "cli"),
    ("softvq_jax.data.latents.format", "data"),
  ],
)
def test_layer_names(module, expected):
  assert layer(module) == expected


def test_only_checkpointing_imports_orbax():
  users = []
  for path in library_files():
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module]
      if any(n.split(".")[0] == "orbax" for n in names):
        users.append(module_name(path))
  assert set(users) == {"softvq_jax.checkpointing"}, users


def test_models_read_no_files():
  io_modules = {"safetensors", "pickle", "torch", "etils", "tensorflow", "orbax"}
  bad = []
  for path in (ROOT / "models").rglob("*.py"):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        bad += [f"{path.name}: {a.name}" for a in node.names if a.name.split(".")[0] in io_modules]
      elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in io_modules:
        bad.append(f"{path.name}: {node.module}")
      elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
        bad.append(f"{path.name}:{node.lineno}: open()")
  assert not bad, bad


def test_library_files_stay_short():
  long = {
    module_name(p): n for p in library_files() if (n := len(p.read_text().splitlines())) > MAX_LINES
  }
  assert not long, f"library files over {MAX_LINES} lines: {long}"


def test_data_holds_no_model_code():
  """data/ sits above models/ in the order, but imports none of models, weights, objectives or
  sampling: the encoders it needs (latent caches) are passed in by training/ and cli/."""
  model_layers = {"models", "weights", "objectives", "sampling"}
  bad = []
  for path in (ROOT / "data").rglob("*.py"):
    module = module_name(path)
    for line, target in imported_modules(path.read_text(), module, path.name == "__init__.py"):
      if layer(target) in model_layers:
        bad.append(f"{module}:{line} imports {target}")
  assert not bad, bad
