"""Command-line plumbing shared by every program: flag parsing and the one error convention.

Each command (`evaluate`, `sample`, `export`, `reconstruct`, `data.cache_latents`,
`data.prepare_imagenet`) defines its flags in its own `FlagValues`, so importing several of them
into one process (a notebook, the test suite) never collides on shared names such as --workdir or
--out, and one command's required flags are not checked when another runs. absl's own flags
(--verbosity, --help) stay global; `main.py` keeps its flags in the global FLAGS (`run(main)`).

The convention (`run`): a mistake the user can fix -- a stray positional argument, an unknown flag
or config key, a bad value, a missing required flag or input file, any `UserError` the program
raises -- is printed as `error: <message>` (one or two lines) on stderr, exit status 2, without a
traceback unless --verbosity>=1. Anything else is a bug and keeps its traceback. Flags are spelled
with underscores (absl's style); an old hyphenated spelling (`--cfg-scale`) still works, with a
deprecation warning.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence

from absl import app, flags

from softvq_jax.utils import logs
from softvq_jax.utils.errors import UserError

EXIT_USER_ERROR = 2
_HELP = ("-h", "--help", "--helpshort", "-?", "--helpfull")


def run(
  main: Callable[[list[str]], object],
  own: flags.FlagValues | None = None,
  argv: Sequence[str] | None = None,
  *,
  positionals: bool = False,
) -> None:
  """`app.run(main)` with the error convention; exits (0, main's int result, or 2).

  own: the program's FlagValues, parsed first; None for programs defining their flags in absl's
    global FLAGS (main.py: `cli.run(main)`).
  argv: the full command line, program name first (default sys.argv); in-process callers (tests)
    pass it and catch SystemExit.
  positionals: whether the program takes positional arguments (they reach `main(argv)` as
    argv[1:]); otherwise any is refused, with a hint at the `--flag=value` spelling.
  """
  argv = deprecated_spellings(list(sys.argv if argv is None else argv), own)

  logs.quiet_env()  # before TensorFlow is imported (no C++ banners)

  def guarded(args: list[str]) -> int:
    logs.configure(verbosity(argv))  # other libraries' INFO lines only with --verbosity>=1
    try:
      result = main(args)
    except (UserError, app.UsageError) as e:
      return report(e, argv)
    return result if isinstance(result, int) else 0

  app.run(guarded, argv=argv, flags_parser=lambda a: _parse_or_exit(own, a, positionals))


def parse(own: flags.FlagValues, argv: Sequence[str]) -> list[str]:
  """Parses a full command line (program name first) into `own` only, e.g. to call main() in
  tests; returns what is left (program name and positionals). Errors raise (absl's)."""
  argv = deprecated_spellings(list(argv), own)
  reset(own)
  with _sys_argv(argv):
    return own(argv)


def reset(fv: flags.FlagValues) -> None:
  """Forgets a previous parse: values and the `--config.a.b` override flags ml_collections
  registered for it (re-registering them would be a DuplicateFlagError)."""
  fv.unparse_flags()
  drop_overrides(fv)


def drop_overrides(fv: flags.FlagValues) -> None:
  """Removes the `--config.a.b` flags a previous parse registered (absl's names have no dot),
  so that a second parse in the same process (tests, notebooks) can register them again."""
  for name in [n for n in list(fv) if "." in n]:
    delattr(fv, name)


def report(error: BaseException, argv: Sequence[str] = ()) -> int:
  """Prints `error: <message>` (and the traceback with --verbosity>=1); returns exit status 2."""
  if verbosity(argv) >= 1 and error.__traceback__ is not None:
    traceback.print_exception(error)
  message = str(error).strip() or type(error).__name__
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  return EXIT_USER_ERROR


def verbosity(argv: Sequence[str] = ()) -> int:
  """absl's --verbosity (-v) from `argv` if given there, else from the parsed global flags."""
  value = None
  for i, arg in enumerate(argv):
    m = re.fullmatch(r"--?(?:verbosity|v)(?:=(-?\d+))?", arg)
    if m:
      nxt = argv[i + 1] if i + 1 < len(argv) else ""
      value = (
        m.group(1) if m.group(1) is not None else (nxt if re.fullmatch(r"-?\d+", nxt) else None)
      )
  if value is not None:
    return int(value)
  try:
    return int(flags.FLAGS.verbosity) if flags.FLAGS.is_parsed() else 0
  except (AttributeError, flags.Error):
    return 0


def deprecated_spellings(argv: list[str], own: flags.FlagValues | None) -> list[str]:
  """`--cfg-scale=2` -> `--cfg_scale=2` when the underscore flag exists, with a warning."""
  known = own if own is not None else flags.FLAGS
  out = list(argv[:1])
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      return out + argv[i:]
    m = re.fullmatch(r"(--?)([A-Za-z][\w-]*-[\w-]*)(=.*)?", arg)
    if m and m.group(2).replace("-", "_") in known:
      new = m.group(2).replace("-", "_")
      sys.stderr.write(f"warning: --{m.group(2)} is deprecated; spell it --{new}\n")
      arg = f"--{new}{m.group(3) or ''}"
    out.append(arg)
  return out


def require_inputs(checks: Iterable[tuple[str, object, str]]) -> None:
  """Raises one UserError listing every missing input, before anything heavy is built.

  checks: (flag, path, kind) with kind "file", "dir" or "path" (either); flag "" for a
  positional argument; empty paths are skipped, and URIs (gs://...) whose storage cannot be
  asked (no credentials here) are left to the program.
  """
  from softvq_jax.utils.paths import expand_path

  missing = []
  for flag, path, kind in checks:
    if not path:
      continue
    p = expand_path(str(path))
    try:
      ok = {"file": p.is_file, "dir": p.is_dir}.get(kind, p.exists)()
      exists = p.exists()
    except Exception:  # noqa: BLE001 -- e.g. a bucket this machine cannot reach
      continue
    if not ok:
      what = "no such file" if kind == "file" else "no such directory" if kind == "dir" else ""
      what = what or "does not exist"
      if exists:
        what = "not a file" if kind == "file" else "not a directory"
      missing.append(f"{flag + '=' if flag else ''}{path} ({what})")
  if len(missing) == 1:
    raise UserError(f"missing input: {missing[0]}")
  if missing:
    raise UserError("missing inputs: " + "; ".join(missing))


def config_key_error(error: BaseException, argv: Sequence[str]) -> str | None:
  """One line for the KeyError/AttributeError ml_collections raises for `--config.lrr=1`.

  config_flags raises it while absl parses the flags (`_ConfigFlag._parse` looking up the
  override's type), as `AttributeError(KeyError('\\'lrr\\'\\nDid you mean "lr" instead of
  "lrr"?'))`. Returns e.g. "unknown config key 'optim.lrr' in --config.optim.lrr=1 (did you mean
  'optim.lr'?)", or None when the error does not name a key of an override on the command line
  (then it is a bug and keeps its traceback).
  """
  e: object = error
  while isinstance(e, BaseException) and e.args:
    e = e.args[0]
  m = re.match(r"""^'?([^'\n]+)'?(?:\nDid you mean "([^"]+)" instead)?""", str(e))
  if not m:
    return None
  key, hint = m.group(1), m.group(2)
  for arg in reversed(argv):
    o = re.match(r"^--?(?:no)?([A-Za-z_]\w*)\.([\w.]+)(=.*)?$", arg)
    if o and key in o.group(2).split("."):
      parts = o.group(2).split(".")
      path = ".".join(parts[: parts.index(key) + 1])
      msg = f"unknown config key '{path}' in {arg}"
      if hint:
        msg += f" (did you mean '{'.'.join([*parts[: parts.index(key)], hint])}'?)"
      return msg
  return None


# ---- parsing -------------------------------------------------------------------------------


@contextlib.contextmanager
def _sys_argv(argv: Sequence[str]):
  """config_flags reads the `--config.*` overrides from sys.argv: show it the parsed argv."""
  old = sys.argv
  sys.argv = list(argv)
  try:
    yield
  finally:
    sys.argv = old


def _parse_or_exit(own: flags.FlagValues | None, argv: list[str], positionals: bool) -> list[str]:
  """Parses `own`, then the global flags; on a user mistake prints one line and exits 2."""
  if own is not None and any(a in _HELP for a in argv[1:]):
    _print_help(own, full="--helpfull" in argv)
    sys.exit(0)
  message = _unloadable_config(own, argv)  # before parsing: overrides would hit the missing file
  rest = argv
  if message is None:
    try:
      rest = _parse(own, argv)
    except flags.UnrecognizedFlagError as e:
      message = _unknown_flag(e, own)
    except flags.Error as e:
      message = _flag_error(e, own)
    except (AttributeError, KeyError) as e:  # ml_collections' unknown config key
      message = config_key_error(e, argv)
      if message is None:
        raise
  if message is None and rest[1:] and not positionals:
    message = _stray_message(rest[1:], own)
  if message is not None:
    if verbosity(argv) >= 1 and sys.exc_info()[0] is not None:
      traceback.print_exc()
    sys.stderr.write(f"error: {message}\n")
    sys.exit(EXIT_USER_ERROR)
  return rest


def _parse(own: flags.FlagValues | None, argv: list[str]) -> list[str]:
  """`own` (known flags only), then absl's global FLAGS on the rest; returns what is left."""
  with _sys_argv(argv):
    rest = argv
    if own is not None:
      reset(own)
      rest = own(argv, known_only=True)
    drop_overrides(flags.FLAGS)
    return flags.FLAGS(rest)


def _flag_sets(own: flags.FlagValues | None) -> list[flags.FlagValues]:
  return [own, flags.FLAGS] if own is not None else [flags.FLAGS]


def _config_flags(own: flags.FlagValues | None):
  from ml_collections.config_flags import config_flags

  for fv in _flag_sets(own):
    for name, flag in fv._flags().items():  # noqa: SLF001 - absl has no public listing
      if config_flags.is_config_flag(flag) and name == flag.name:
        yield fv, name


def _unloadable_config(own: flags.FlagValues | None, argv: Sequence[str]) -> str | None:
  """A `--config=path[:arg]` naming no file (config_flags would defer that error to the first
  access of the config, or raise an OSError from an override)."""
  for _, name in _config_flags(own):
    given = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    given += [b for a, b in zip(argv, argv[1:]) if a == f"--{name}"]
    path = given[-1].split(":", 1)[0] if given else ""
    if given and not os.path.isfile(os.path.expanduser(path)):
      return f"--{name}={given[-1]}: no such config file {path!r}"
  return None


def _stray_message(stray: list[str], own: flags.FlagValues | None) -> str:
  shown = " ".join(repr(s) for s in stray[:4]) + (" ..." if len(stray) > 4 else "")
  first = next((s for s in stray if "=" in s), stray[0])
  hint = "flags are spelled --name=value"
  key = first.split("=", 1)[0].lstrip("-")
  configs = [name for _, name in _config_flags(own)]
  if "=" in first and configs and "." in key:
    hint += f", config keys --{configs[0]}.{first.lstrip('-')}"
  elif "=" in first:
    hint += f" (--{first.lstrip('-')})"
  return (
    f"unexpected argument{'s' if len(stray) > 1 else ''} {shown}: this program takes none; {hint}"
  )


def _names(own: flags.FlagValues | None) -> list[str]:
  return [n for fv in _flag_sets(own) for n in fv if "." not in n]


def _unknown_flag(e: flags.UnrecognizedFlagError, own: flags.FlagValues | None) -> str:
  name = getattr(e, "flagname", "") or str(e)
  names = _names(own)
  close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
  close = close or sorted(n for n in names if n.startswith(name) and len(name) >= 3)[:1]
  hint = f" (did you mean --{close[0]}?)" if close else ""
  return f"unknown flag --{name}{hint}; see --help"


def _flag_error(e: flags.Error, own: flags.FlagValues | None) -> str:
  text = str(e)
  if re.search(r"Flag --\S+ must have a value other than None", text):
    missing = _missing_required(own) or re.findall(r"Flag --(\S+) must have a value", text)
    return (
      "missing required flag"
      + ("s " if len(missing) > 1 else " ")
      + ", ".join(f"--{n}" for n in missing)
    )
  if "Traceback (most recent call last)" in text:  # a config file's get_config() raised
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    head = re.sub(r"^flag (\S+?): .*$", r"\1", lines[0])
    last = re.sub(r"^\w+(Error|Exception): ", "", lines[-1])
    return f"{head}: {last}"
  return text.replace("\n", " ").strip()


def _missing_required(own: flags.FlagValues | None) -> list[str]:
  out = []
  for fv in _flag_sets(own):
    for name, flag in fv._flags().items():  # noqa: SLF001
      required = any(
        "must have a value other than None" in str(getattr(v, "message", ""))
        for v in flag.validators
      )
      if required and name == flag.name and flag.value is None and name not in out:
        out.append(name)
  return out


def _print_help(own: flags.FlagValues, full: bool) -> None:
  doc = (sys.modules["__main__"].__doc__ or "").strip()
  sys.stdout.write((doc + "\n\n" if doc else "") + "flags:\n" + own.get_help() + "\n")
  if full:
    sys.stdout.write("\nabsl flags:\n" + flags.FLAGS.get_help() + "\n")


def hide_accelerators_from_tf() -> None:
  """tf.data runs on CPU only: keep TensorFlow away from GPU/TPU memory."""
  try:
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (ImportError, RuntimeError, ValueError):
    pass
