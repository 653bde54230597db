"""Which datasets a run reads, where their copies lie, and the label scheme its head follows.

A run's data are named by its config (`data.*`):
  dataset         casme2 | samm | smic_hs | casme3 (one build) or megc2019, the MEGC 2019
                  composite: the casme2, samm and smic_hs builds of the run's method and
                  phase read together (their examples carry their source dataset)
  labels          a scheme of mer_jax.data.labels.SCHEMES; "" = the dataset's native one
                  (megc2019 and protocol=cross: megc3, the shared 3 classes)
  protocol=cross  train on `train_datasets` (a comma list; megc2019 stands for its three),
                  validate on whole subjects of theirs, test on every video of `test_dataset`
  manual_dir      one dataset: its folder. Several (the composite, cross): a folder holding
                  one subfolder per dataset, named as the dataset (casme2/, samm/, smic_hs/),
                  or an explicit list `casme2=DIR1,samm=DIR2,smic_hs=DIR3`
The head's size is the scheme's number of classes, and every report names the scheme's
classes (`classes`), so a run's files say what its labels mean.
"""
from __future__ import annotations

import os
import pathlib
from typing import Mapping

from mer_jax.data import DATASETS, labels, megc
from mer_jax.plumbing.errors import UsageError

# A composite: its name and the datasets whose builds it reads.
COMPOSITES = {"megc2019": megc.DATASETS}
DATASET_NAMES = DATASETS + tuple(COMPOSITES)
PROTOCOLS = ("paper", "loso", "cross")
# The scheme a run follows when data.labels is "": a dataset's native labels, a
# composite's or a cross-dataset run's shared three classes.
SHARED_SCHEME = "megc3"


def expand(names: str) -> tuple[str, ...]:
  """The built datasets of a comma list of names (a composite stands for its members)."""
  out = []
  for name in filter(None, (n.strip() for n in names.split(","))):
    if name not in DATASET_NAMES:
      raise UsageError(f"unknown dataset {name!r}; valid: {', '.join(DATASET_NAMES)}")
    out += COMPOSITES.get(name, (name,))
  return tuple(dict.fromkeys(out))


def train_test(data: Mapping) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(training datasets, test datasets) of protocol=cross; ((), ()) otherwise. The composite
  minus one: train_datasets=megc2019 and test_dataset=samm trains on casme2 + smic_hs."""
  if data.get("protocol", "paper") != "cross":
    return (), ()
  test = expand(data.get("test_dataset", ""))
  if not test or not data.get("train_datasets", ""):
    raise UsageError("data.protocol=cross needs data.train_datasets (e.g. casme2 or "
                     "casme2,smic_hs or megc2019) and data.test_dataset (e.g. samm)")
  train = tuple(d for d in expand(data["train_datasets"]) if d not in test)
  if not train:
    raise UsageError(f"data.train_datasets={data['train_datasets']} leaves no dataset to train "
                     f"on beside data.test_dataset={data['test_dataset']}")
  return train, test


def members(data: Mapping) -> tuple[str, ...]:
  """The datasets whose builds a run reads, in order."""
  train, test = train_test(data)
  if train:
    return train + test
  return expand(data.get("dataset", "casme2"))


def scheme(data: Mapping) -> labels.Scheme:
  """The label scheme of a run's config (`data`: config.data, or its dict in metrics.json)."""
  name = data.get("labels", "")
  if not name:
    multi = data.get("protocol") == "cross" or data.get("dataset", "casme2") in COMPOSITES
    name = SHARED_SCHEME if multi else data.get("dataset", "casme2")
  s = labels.scheme(name)
  missing = [d for d in members(data) if d not in s.datasets]
  if missing:
    raise UsageError(f"label scheme {s.name!r} has no classes for {', '.join(missing)} (it "
                     f"covers {', '.join(s.datasets)}); choose data.labels, e.g. megc3")
  return s


def data_name(data: Mapping) -> str:
  """A run's data in one name: its dataset (casme2, megc2019, ...), or TRAIN→TEST under
  protocol=cross (the names as given, e.g. megc2019→samm)."""
  if data.get("protocol", "paper") == "cross":
    return f"{data.get('train_datasets', '')}→{data.get('test_dataset', '')}"
  return data.get("dataset", "casme2")


def classes(data: Mapping) -> tuple[str, ...]:
  """The class names of a run's head, in output order."""
  return scheme(data).classes


def manual_dirs(manual_dir: str, names: tuple[str, ...]) -> dict[str, str]:
  """dataset -> its folder, absolute: `manual_dir` itself for one dataset, else
  manual_dir/<dataset>, or the `name=DIR,...` list (see the module docstring)."""
  spec = str(manual_dir)
  if "=" in spec:
    given = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
      name, eq, path = (x.strip() for x in item.partition("="))
      if not eq or name not in DATASETS:
        raise UsageError(f"data.manual_dir item {item!r}: expected DATASET=DIR with DATASET "
                         f"one of {', '.join(DATASETS)}")
      given[name] = path
    missing = [n for n in names if n not in given]
    if missing:
      raise UsageError(f"data.manual_dir names no folder for {', '.join(missing)}; add "
                       f"{','.join(f'{n}=DIR' for n in missing)}")
  else:
    given = ({names[0]: spec} if len(names) == 1 else
             {n: os.path.join(spec, n) for n in names})
  return {n: str(pathlib.Path(os.path.expanduser(given[n])).absolute()) for n in names}
