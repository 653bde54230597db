"""Label schemes: which class a video of any dataset counts as, as data.

A scheme is a name, its class names (the order of a model head, whose size is
`len(scheme.classes)`) and a table (dataset, native emotion) -> class, or None
for a video the scheme drops. A pair missing from the table is an error (the
scheme does not speak that dataset), never a silent drop.

  casme2    CASME II's 7 native labels, in EMOTIONS order (today's heads)
  samm      SAMM's 8 native labels
  smic_hs   SMIC-HS's 3 folder labels
  casme3    CAS(ME)^3's 7 native labels
  casme3_4  CAS(ME)^3's 4-class grouping (negative, positive, surprise, others)
  casme3_3  CAS(ME)^3's 3-class grouping (others dropped)
  megc3     the MEGC 2019 composite's negative/positive/surprise over CASME II,
            SAMM and SMIC-HS (mer_jax.data.megc says whose rules), and
            CAS(ME)^3 by its own 3-class grouping

Native labels are the readers' canonical spellings (each reader maps its
sheet's variants onto them).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from mer_jax.plumbing.errors import UsageError

# CASME II's labels; the label order of the TFDS ClassLabel and of every model
# head until training follows a scheme.
EMOTIONS = ("happiness", "disgust", "surprise", "repression", "sadness", "fear", "others")

# Each dataset's native labels (the `Video.emotion` its reader writes).
NATIVE = {
    "casme2": EMOTIONS,
    "samm": ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise",
             "other"),
    "smic_hs": ("negative", "positive", "surprise"),
    "casme3": ("anger", "disgust", "fear", "happy", "sad", "surprise", "others"),
}

THREE = ("negative", "positive", "surprise")

# CAS(ME)^3's own groupings (its paper's 4- and 3-class tasks).
CASME3_FOUR = {"anger": "negative", "disgust": "negative", "fear": "negative",
               "sad": "negative", "happy": "positive", "surprise": "surprise",
               "others": "others"}
CASME3_THREE = {e: (None if c == "others" else c) for e, c in CASME3_FOUR.items()}

# MEGC 2019 (composite of CASME II, SAMM, SMIC-HS): see mer_jax.data.megc.
MEGC2019 = {
    "casme2": {"disgust": "negative", "repression": "negative", "happiness": "positive",
               "surprise": "surprise", "fear": None, "sadness": None, "others": None},
    "samm": {"anger": "negative", "contempt": "negative", "disgust": "negative",
             "fear": "negative", "sadness": "negative", "happiness": "positive",
             "surprise": "surprise", "other": None},
    "smic_hs": {"negative": "negative", "positive": "positive", "surprise": "surprise"},
}


@dataclasses.dataclass(frozen=True)
class Scheme:
  """Classes of a model head and the (dataset, native emotion) -> class table."""
  name: str
  classes: tuple[str, ...]
  table: Mapping[tuple[str, str], str | None] = dataclasses.field(repr=False)

  def __post_init__(self):
    bad = {c for c in self.table.values() if c is not None and c not in self.classes}
    if bad:
      raise ValueError(f"scheme {self.name}: classes {sorted(bad)} not in {self.classes}")

  @property
  def datasets(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(d for d, _ in self.table))

  def class_of(self, video) -> str | None:
    """The video's class, or None where the scheme drops it."""
    key = (video.dataset, video.emotion)
    if key not in self.table:
      raise ValueError(f"label scheme {self.name!r} has no class for {video.dataset} emotion "
                       f"{video.emotion!r} (it covers {', '.join(self.datasets)})")
    return self.table[key]

  def index(self, video) -> int | None:
    """The video's class index (the model head's output), or None where dropped."""
    c = self.class_of(video)
    return None if c is None else self.classes.index(c)


def _native(dataset: str) -> Scheme:
  return Scheme(dataset, NATIVE[dataset], {(dataset, e): e for e in NATIVE[dataset]})


def _grouped(name: str, classes: tuple[str, ...], groups: Mapping[str, Mapping]) -> Scheme:
  return Scheme(name, classes, {(d, e): c for d, g in groups.items() for e, c in g.items()})


SCHEMES = {s.name: s for s in (
    _native("casme2"), _native("samm"), _native("smic_hs"), _native("casme3"),
    _grouped("casme3_4", ("negative", "positive", "surprise", "others"),
             {"casme3": CASME3_FOUR}),
    _grouped("casme3_3", THREE, {"casme3": CASME3_THREE}),
    _grouped("megc3", THREE, {**MEGC2019, "casme3": CASME3_THREE}),
)}


def scheme(name: str) -> Scheme:
  """The named scheme; an unknown name is a UsageError listing the valid ones."""
  if name not in SCHEMES:
    raise UsageError(f"unknown label scheme {name!r}; valid: {', '.join(SCHEMES)}")
  return SCHEMES[name]
