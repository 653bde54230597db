r"""One command-line convention for every mer_jax program.

Every `python -m mer_jax.*` program builds its flags with `parser()` (argparse),
reads them with `parse()` and runs its `main` through `run()`:

- flags are spelled with underscores (`--manual_dir`);
- `--help` prints the program's docstring and flags and exits 0;
- a config file flag (`add_config`) takes `path[:arg]` (`get_config(arg)`), and
  any field is overridden with `--config.FIELD=VALUE` (`--config.optim.lr=1e-4`),
  as ml_collections' config_flags does; an unknown field is one line naming the
  closest valid field;
- an error the user can fix (`mer_jax.plumbing.errors.UserError`) is printed as one
  line, `error: ...`, and the program exits 2; anything else is a bug and
  keeps its traceback.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import pathlib
import sys
from typing import Callable, Sequence

import ml_collections

from mer_jax.plumbing.errors import NotFound, UsageError, UserError

CONFIG_PREFIX = "--config."


def parser(module: str, doc: str | None) -> argparse.ArgumentParser:
  """The parser of `python -m MODULE`, its description the module docstring."""
  return argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                        formatter_class=argparse.RawDescriptionHelpFormatter)


def add_config(p: argparse.ArgumentParser, *, required: bool = True,
               help: str = "config file, e.g. configs/paper.py:model=swin_b,method=m2,phase=af "
                           "(FILE:ARG passes ARG to its get_config)") -> None:
  """A `--config path[:arg]` flag; `parse()` loads it and applies `--config.X=Y`."""
  p.add_argument("--config", required=required, metavar="FILE[:ARG]", help=help)
  p.set_defaults(_takes_config=True)


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
  """Parses argv; with `add_config`, args.config is the loaded, overridden,
  locked ConfigDict and args.config_path the file as given."""
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides, rest = split_config_overrides(argv)
  args = p.parse_args(rest)
  if getattr(args, "_takes_config", False):
    args.config_path = args.config
    if args.config is None:
      if overrides:
        raise UsageError(f"{overrides[0].split('=')[0]} needs --config FILE")
    else:
      args.config = load_config(args.config, overrides)
  elif overrides:
    p.error(f"unrecognized arguments: {' '.join(overrides)}")
  return args


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(['FIELD=VALUE', ...], the other arguments) from `--config.FIELD=VALUE`
  or `--config.FIELD VALUE` arguments."""
  overrides, rest = [], []
  it = iter(argv)
  for a in it:
    if a.startswith(CONFIG_PREFIX):
      body = a[len(CONFIG_PREFIX):]
      if "=" not in body:
        value = next(it, None)
        if value is None:
          raise UsageError(f"{a} needs a value: {a}=VALUE")
        body = f"{body}={value}"
      overrides.append(body)
    else:
      rest.append(a)
  return overrides, rest


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (`path:arg` -> `get_config(arg)`), with
  FIELD=VALUE overrides applied, locked (no new fields)."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path).expanduser()
  if not file.is_file():
    raise NotFound(f"Config file {path} not found; the paper's configs are "
                   "configs/paper.py:model=...,method=...,phase=... (see its docstring).")
  spec_ = importlib.util.spec_from_file_location(f"mer_jax_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise UsageError(f"{path} has no get_config(): a config file defines "
                     "get_config() returning an ml_collections.ConfigDict.")
  config = module.get_config(arg) if arg else module.get_config()
  apply_overrides(config, overrides, flag="--config.")
  config.lock()
  return config


def field_names(config, prefix: str = "") -> list[str]:
  """Every leaf field of a ConfigDict, dotted ('optim.lr', ...)."""
  out = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out += field_names(v, f"{prefix}{k}.")
    else:
      out.append(f"{prefix}{k}")
  return out


def apply_overrides(config, overrides: Sequence[str], *, flag: str = "") -> None:
  """Sets each 'FIELD=VALUE' in place, VALUE read as the field's own type.
  An unknown field is a UsageError naming the closest valid field."""
  for o in overrides:
    if "=" not in o:
      raise UsageError(f"{flag}{o}: expected FIELD=VALUE")
    field, value = o.split("=", 1)
    node, parts = config, field.split(".")
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise UsageError(f"{flag}{field}: unknown config field{_closest(config, field)}")
      if i < len(parts) - 1:
        node = node[part]
    old = node[parts[-1]]
    if isinstance(old, ml_collections.ConfigDict):
      raise UsageError(f"{flag}{field} is a group of fields; set one of them, e.g. "
                       f"{flag}{field_names(old, field + '.')[0]}=...")
    try:
      node[parts[-1]] = parse_value(value, old)
    except (ValueError, TypeError, SyntaxError) as e:
      raise UsageError(f"{flag}{field}={value}: expected type {type(old).__name__} "
                       f"({e})") from None


def override_flags(base, config) -> list[str]:
  """The `--config.FIELD=VALUE` flags that turn `base` into `config`: one per
  leaf field whose value differs, in field order, each value written so that
  `apply_overrides` reads it back as the same value."""
  flags = []
  for field in field_names(config):
    value, old = _get(config, field), _get(base, field)
    if value != old or type(value) is not type(old):
      flags.append(f"{CONFIG_PREFIX}{field}={format_value(value)}")
  return flags


def _get(config, field: str):
  for part in field.split("."):
    config = config[part]
  return config


def format_value(value) -> str:
  """A config value as the command line writes it (`parse_value`'s inverse)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, str):
    return value
  return repr(value)


def _closest(config, field: str) -> str:
  match = difflib.get_close_matches(field, field_names(config), n=1, cutoff=0.5)
  return f"; did you mean {match[0]}?" if match else ""


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_value(text: str, like):
  """The command-line text as the type of the value it replaces."""
  if isinstance(like, bool):
    t = text.strip().lower()
    if t in _TRUE | _FALSE:
      return t in _TRUE
    raise ValueError("true or false")
  if isinstance(like, int):
    return int(text)
  if isinstance(like, float):
    return float(text)
  if isinstance(like, str):
    return text
  if isinstance(like, (tuple, list)):
    value = ast.literal_eval(text)
    return type(like)(value if isinstance(value, (tuple, list)) else (value,))
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def run(main: Callable[[Sequence[str] | None], int | None], argv=None) -> None:
  """Runs a program's `main(argv)` and exits with its code; a UserError is
  one line on stderr and exit 2, anything else keeps its traceback."""
  from absl import logging
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS are chatty at INFO
  try:
    code = main(argv)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    code = 2
  sys.exit(code or 0)
