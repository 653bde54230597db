"""What a build was made from, so that a build is never handed out for another source.

A build's fingerprint (fingerprint.json in its dataset directory, beside
quality.json) holds:
  dataset    the dataset read (casme2, samm, smic_hs, casme3);
  source     the dataset's directory, absolute with symlinks resolved;
  sheet      the coding sheet's file name and the sha256 of its bytes (None for
             SMIC-HS, whose labels are its folders);
  synthetic  the parameters of a synthetic set (its SYNTHETIC_FILE, which
             mer_jax.data.synthetic writes into the tree), or None for real data;
  code       `code_version()`: a hash of the source text of the modules that
             decide the pixels and labels, so a change to them is a new
             fingerprint with no version bump to forget (the text, not its
             syntax tree, whose dump differs between Python versions: a build
             made on a login node stays valid on a compute node);
  version    the TFDS builder's VERSION.
`key(fp)` (a short hash of these) names the folder a build lives in, so builds
of different fingerprints coexist (mer_jax.data.build).
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import pathlib

FILE = "fingerprint.json"
SYNTHETIC_FILE = "synthetic.json"
FIELDS = ("dataset", "source", "sheet", "synthetic", "code", "version")
# mer_jax.data modules whose code decides a build's examples.
CODE_MODULES = ("casme2", "samm", "smic_hs", "casme3", "sheets", "videos", "labels", "dataset_configs", "splits", "phases",
                "faces", "align", "flow", "pixels", "preprocess", "runner", "tfds_builder")
HERE = pathlib.Path(__file__).parent


@functools.lru_cache(maxsize=None)
def code_version(modules: tuple[str, ...] = CODE_MODULES) -> str:
  """A short hash of the source text of mer_jax.data's `modules`."""
  h = hashlib.sha256()
  for name in modules:
    h.update(f"{name}\0".encode() + (HERE / f"{name}.py").read_bytes() + b"\0")
  return h.hexdigest()[:12]


def of_source(source: str | pathlib.Path, sheet: str | pathlib.Path | None, version: str, *,
              dataset: str = "casme2") -> dict:
  """The fingerprint of a build of `dataset` from the tree `source` read with the coding
  sheet `sheet` (None: a dataset without one), by this checkout's code."""
  source = pathlib.Path(source).expanduser().resolve()
  syn = source / SYNTHETIC_FILE
  if sheet is not None:
    sheet = pathlib.Path(sheet).expanduser()
    sheet = {"name": sheet.name, "sha256": hashlib.sha256(sheet.read_bytes()).hexdigest()}
  return {"dataset": dataset, "source": str(source), "sheet": sheet,
          "synthetic": json.loads(syn.read_text()) if syn.exists() else None,
          "code": code_version(), "version": str(version)}


def key(fp: dict) -> str:
  """A short hash of the fingerprint's FIELDS: the name of its builds' folder."""
  text = json.dumps({f: fp.get(f) for f in FIELDS}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def stamped(fp: dict) -> dict:
  """`fp` with the time of the build (UTC), as fingerprint.json holds it."""
  return dict(fp, built=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def read(dataset_dir: str | pathlib.Path) -> dict | None:
  """A build's fingerprint, or None for a build made before builds recorded one."""
  p = pathlib.Path(dataset_dir) / FILE
  return json.loads(p.read_text()) if p.exists() else None


def show(field: str, fp: dict) -> str:
  v = fp.get(field)
  if field == "sheet":
    return f"{v['name']} (sha256 {v['sha256'][:12]})" if v else "none"
  if field == "synthetic":
    if not v:
      return "no (real data)"
    return (f"{v.get('videos')} videos, {v.get('subjects')} subjects, seed {v.get('seed')}, "
            f"intensity {v.get('intensity'):g}")
  return str(v)


def describe(fp: dict) -> str:
  """One line: source, sheet, synthetic settings, code and TFDS version."""
  return (f"dataset {fp.get('dataset', 'casme2')}, source {show('source', fp)}, sheet {show('sheet', fp)}, synthetic "
          f"{show('synthetic', fp)}, code {fp['code']}, version {fp['version']}")


def differences(old: dict, new: dict) -> list[str]:
  """'FIELD OLD -> NEW' for each field of FIELDS in which two fingerprints differ."""
  return [f"{f} {show(f, old)} -> {show(f, new)}" for f in FIELDS if old.get(f) != new.get(f)]
