"""The one record of a coded micro-expression clip, for every dataset.

Each dataset module (casme2, samm, smic_hs, casme3) turns its folder into
`Video` records with its quirks handled once; everything downstream (phases,
preprocessing, splits, builds) sees only these.

Ids. `video_id` is unique across datasets in a composite: CASME II keeps its
historical "subNN/EPxx_yy" (every existing build, split and test uses it);
another dataset's id is prefixed with its name, "samm/006/006_1_2". The same
rule gives `subject_id` ("sub01", "samm/006"), the unit of a subject-wise split.
`subject` and `episode` stay the folder names.
"""
from __future__ import annotations

import dataclasses
import pathlib

from mer_jax.data import labels

# Frame rates of the releases read here (frames per second), and whether their
# frames are gray (M1's colour input then carries gray in three channels).
FPS = {"casme2": 200, "samm": 200, "smic_hs": 100, "casme3": 30}
GRAY = {"casme2": False, "samm": True, "smic_hs": False, "casme3": False}

# How a video's apex was chosen (`Video.apex_rule`).
APEX_RULES = ("sheet", "middle", "flow")


@dataclasses.dataclass(frozen=True)
class Video:
  """One coded clip of one subject."""
  dataset: str                 # one of mer_jax.data.DATASETS
  subject: str                 # folder name, e.g. "sub01", "006", "s3", "spNO.1"
  episode: str                 # folder name (CAS(ME)^3: suffixed where a name repeats)
  onset: int                   # absolute frame numbers (the N in the frame's file name)
  apex: int
  offset: int
  emotion: str                 # the dataset's native label (labels.NATIVE[dataset])
  frames: dict[int, pathlib.Path] = dataclasses.field(repr=False, compare=False)
  action_units: str = ""
  # "sheet": coded by the dataset; "middle": (onset + offset) // 2 where the
  # dataset has none (SMIC-HS, CASME II's '/', SAMM's missing apexes);
  # "flow": spotted from the optical flow (mer_jax.data.apex).
  apex_rule: str = "sheet"

  def __post_init__(self):
    if self.apex_rule not in APEX_RULES:
      raise ValueError(f"apex_rule {self.apex_rule!r} is not one of {APEX_RULES}")

  @property
  def apex_estimated(self) -> bool:
    """The apex is not the dataset's coding (a build records it per video)."""
    return self.apex_rule != "sheet"

  @property
  def subject_id(self) -> str:
    return self.subject if self.dataset == "casme2" else f"{self.dataset}/{self.subject}"

  @property
  def video_id(self) -> str:
    return f"{self.subject_id}/{self.episode}"

  @property
  def label(self) -> int:
    """The class index in CASME II's 7 (labels.EMOTIONS); other datasets: choose a scheme."""
    return labels.scheme("casme2").index(self)


@dataclasses.dataclass
class VideoSet:
  """A dataset copy read from disk: its videos, in the reader's order, and the quirks met."""
  dataset: str
  root: pathlib.Path
  sheet: pathlib.Path | None   # the coding sheet read (None: labels from folders, SMIC-HS)
  videos: list[Video]
  notes: list[str]
