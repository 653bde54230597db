"""The CASME II dataset's configs: one per preprocessing method x temporal phase.

A config's name is `{method}_{phase}` ("m2_mfs", "m3_af", "face_rgb_384_kfs": any
method, a corner of crop x colour x size included), the name of its TFDS config and of
its folder under the TFDS data dir. "all" is the twelve configs of the named methods
(m1, m2, m2a, m3); the other corners' configs are built by name (or by the training
that needs one). Defined here, apart from the TFDS
builder, so that naming a config needs neither TensorFlow nor TFDS.
"""
from __future__ import annotations

from mer_jax.data.phases import Phase
from mer_jax.data.preprocess import Method
from mer_jax.plumbing.errors import UsageError


def config_name(method: "Method | str", phase: "Phase | str") -> str:
  """'m2_mfs' for (Method.M2, Phase.MFS); strings are parsed (and checked) first."""
  return f"{Method.parse(method).value}_{Phase.parse(phase).value}"


CONFIG_NAMES = tuple(config_name(m, p) for m in Method for p in Phase)
NAMED_METHODS = (Method.M1, Method.M2, Method.M2A, Method.M3)   # what "all" builds


def check_config_name(name: str, *, or_all: bool = False) -> str:
  """`name` if it is a config's; else ValueError listing the valid names."""
  if name not in CONFIG_NAMES:
    raise UsageError(f"Unknown CASME II config {name!r}; valid: {', '.join(CONFIG_NAMES)}"
                     + (", all" if or_all else ""))
  return name


def parse_config_name(name: str) -> tuple[Method, Phase]:
  """(method, phase) of a config name."""
  method, _, phase = check_config_name(name).rpartition("_")
  return Method(method), Phase(phase)


def parse_configs(spec: str) -> list[str]:
  """'all' (or '': the named methods' twelve) or a comma list of config names -> the
  names, checked."""
  if spec in ("all", ""):
    return [config_name(m, p) for m in NAMED_METHODS for p in Phase]
  return [check_config_name(s.strip(), or_all=True) for s in spec.split(",")]


def description(name: str) -> str:
  """What a config holds, e.g. 'dlib face box +20 px, ...; apex frame'."""
  method, phase = parse_config_name(name)
  if method.is_flow:  # mer_jax.data.preprocess.phase_frames
    return (f"{method.description}; flow from the onset to the "
            + ("apex frame" if phase is Phase.AF else
               f"phase's frames other than the onset ({phase.description})"))
  return f"{method.description}; {phase.description}"
