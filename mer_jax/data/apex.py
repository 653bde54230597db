"""Apex spotting: the frame of a clip that moves most from its onset (for SMIC-HS).

SMIC-HS codes no apex. The rule here: DIS optical flow (mer_jax.data.flow,
the flow M3 uses) from the onset frame to every later frame of onset..offset,
on gray frames scaled to WIDTH px wide (the argmax does not need full
resolution, and it keeps spotting a clip to a fraction of a second); the apex
is the frame with the largest mean flow magnitude (ties: the earliest). The
mean is over the whole frame: the clips are face-centred and the subjects
sit still, and a whole-frame mean needs no face detector. A head movement
would win over the expression; `Video.apex_rule` ("flow") records that this
rule, not a coder, chose the apex.
"""
from __future__ import annotations

import pathlib
from typing import Mapping

import numpy as np

from mer_jax.data import flow
from mer_jax.data.pixels import read_frame, to_gray

WIDTH = 160


def _gray(path: pathlib.Path) -> np.ndarray:
  import cv2
  gray = to_gray(read_frame(path))[..., 0]
  h, w = gray.shape
  if w > WIDTH:
    gray = cv2.resize(gray, (WIDTH, max(1, round(h * WIDTH / w))), interpolation=cv2.INTER_AREA)
  return np.ascontiguousarray(gray)


def motion_from_onset(frames: Mapping[int, pathlib.Path], onset: int, offset: int
                      ) -> dict[int, float]:
  """Frame number -> mean DIS flow magnitude (px at WIDTH) from the onset, onset < n <= offset."""
  start = _gray(frames[onset])
  dis = flow.make_flow("dis")
  out = {}
  for n in sorted(frames):
    if onset < n <= offset:
      uv = flow.optical_flow(start, _gray(frames[n]), flow=dis)
      out[n] = float(np.hypot(uv[..., 0], uv[..., 1]).mean())
  return out


def spot_apex(frames: Mapping[int, pathlib.Path], onset: int, offset: int) -> int:
  """The frame of onset..offset moving most from the onset (the onset itself if alone)."""
  motion = motion_from_onset(frames, onset, offset)
  return max(motion, key=lambda n: (motion[n], -n)) if motion else onset
