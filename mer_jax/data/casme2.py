"""CASME II on disk: the coding sheet and the frame folders.

Every quirk of the distributed dataset is handled here, once; the rest of the
system sees only clean `Video` records.
"""
from __future__ import annotations

import dataclasses
import pathlib

# Label order of the TFDS ClassLabel and of every model head.
EMOTIONS = ("happiness", "disgust", "surprise", "repression", "sadness", "fear", "others")


class Casme2Error(Exception):
  """A problem with the user's CASME II copy; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Video:
  """One coded CASME II sample (a clip of one subject)."""
  subject: str                 # folder name, e.g. "sub01"
  episode: str                 # folder name, e.g. "EP02_01f"
  onset: int                   # absolute frame numbers (the N of imgN.jpg)
  apex: int
  offset: int
  emotion: str                 # one of EMOTIONS
  frames: dict[int, pathlib.Path] = dataclasses.field(repr=False, compare=False)
  action_units: str = ""
  apex_estimated: bool = False  # apex was missing ('/') in the sheet; see fallback

  @property
  def video_id(self) -> str:
    return f"{self.subject}/{self.episode}"

  @property
  def label(self) -> int:
    return EMOTIONS.index(self.emotion)
