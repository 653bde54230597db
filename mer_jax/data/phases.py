"""The paper's three temporal phases: which frames of a video a phase uses.

AF   the apex frame.
KFS  the key frames: onset, apex, offset.
MFS  the multi-frame sequence: onset+[0..3], apex+[-2..2], offset+[-3..0],
     clipped to onset..offset, without duplicates (13 frames when the windows
     do not overlap).

Frames outside onset..offset are never used. A frame's role is "apex",
"onset" or "offset" for the key frames themselves (apex first, then onset,
then offset, when two coincide: apex == onset gives one frame, role apex),
and "window" for the other MFS frames.
"""
from __future__ import annotations

import dataclasses

from mer_jax.plumbing.choices import Choice
from mer_jax.data.videos import Video

ROLES = ("onset", "apex", "offset", "window")

# MFS windows as (anchor, offsets), from the paper.
_MFS_WINDOWS = (("onset", range(0, 4)), ("apex", range(-2, 3)), ("offset", range(-3, 1)))


class Phase(Choice):
  """A temporal sampling phase of the paper; `Phase.parse("mfs")`, `Phase.names()`."""
  AF = "af"
  KFS = "kfs"
  MFS = "mfs"

  @property
  def description(self) -> str:
    return _DESCRIPTION[self]


_DESCRIPTION = {Phase.AF: "apex frame", Phase.KFS: "onset, apex, offset",
                Phase.MFS: ", ".join(f"{anchor}+[{ds[0]}..{ds[-1]}]"
                                     for anchor, ds in _MFS_WINDOWS)}


@dataclasses.dataclass(frozen=True)
class PhaseFrame:
  """One frame a phase uses: its absolute number (the N of imgN.jpg) and its role."""
  frame_index: int
  role: str                    # one of ROLES


def _key_roles(video: Video) -> dict[int, str]:
  roles = {}
  for role in ("offset", "onset", "apex"):  # later ones win: apex > onset > offset
    roles[getattr(video, role)] = role
  return roles


def select_frames(video: Video, phase: "Phase | str") -> tuple[PhaseFrame, ...]:
  """The frames `phase` takes from `video`, sorted by frame number."""
  phase = Phase.parse(phase)
  if not video.onset <= video.apex <= video.offset:
    # load_casme2 never builds such a Video; a hand-made one would silently
    # give AF no frame at all.
    raise ValueError(f"{video.video_id}: apex {video.apex} is outside onset..offset "
                     f"({video.onset}..{video.offset}); fix the coding.")
  keys = _key_roles(video)
  if phase is Phase.AF:
    indices = {video.apex}
  elif phase is Phase.KFS:
    indices = {video.onset, video.apex, video.offset}
  else:
    indices = {getattr(video, anchor) + d for anchor, ds in _MFS_WINDOWS for d in ds}
  indices = {i for i in indices if video.onset <= i <= video.offset}
  return tuple(PhaseFrame(i, keys.get(i, "window")) for i in sorted(indices))
