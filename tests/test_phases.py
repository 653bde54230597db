"""Frame selection of AF, KFS and MFS, hand-checked against the paper's windows."""
import pytest

from mer_jax.data.casme2 import Video
from mer_jax.data.phases import Phase, PhaseFrame, missing_frames, select_frames


def video(onset, apex, offset, frames=None):
  frames = frames if frames is not None else range(onset - 5, offset + 6)
  return Video("sub01", "EP01_01", onset, apex, offset, "others", {n: f"img{n}.jpg" for n in frames})


def idx(sel):
  return [f.frame_index for f in sel]


def test_af_is_the_apex():
  assert select_frames(video(46, 59, 86), Phase.AF) == (PhaseFrame(59, "apex"),)


def test_kfs_is_onset_apex_offset():
  assert select_frames(video(46, 59, 86), "kfs") == (
      PhaseFrame(46, "onset"), PhaseFrame(59, "apex"), PhaseFrame(86, "offset"))


def test_mfs_non_overlapping_has_13_frames():
  sel = select_frames(video(46, 59, 86), Phase.MFS)
  assert idx(sel) == [46, 47, 48, 49, 57, 58, 59, 60, 61, 83, 84, 85, 86]
  roles = {f.frame_index: f.role for f in sel}
  assert (roles[46], roles[59], roles[86]) == ("onset", "apex", "offset")
  assert sum(r == "window" for r in roles.values()) == 10


def test_apex_equal_onset_overlaps_without_duplicates():
  sel = select_frames(video(30, 30, 50), Phase.MFS)
  # onset+[0..3] = 30..33, apex[-2..2] clipped to 30..32, offset[-3..0] = 47..50
  assert idx(sel) == [30, 31, 32, 33, 47, 48, 49, 50]
  assert sel[0] == PhaseFrame(30, "apex")
  assert idx(select_frames(video(30, 30, 50), Phase.KFS)) == [30, 50]


def test_short_video_clips_to_onset_offset():
  sel = select_frames(video(10, 12, 14), Phase.MFS)
  assert idx(sel) == [10, 11, 12, 13, 14]
  assert all(10 <= i <= 14 for i in idx(sel))


def test_frames_outside_onset_offset_never_used():
  for onset, apex, offset in [(5, 5, 6), (5, 6, 6), (1, 2, 3), (100, 140, 141)]:
    for phase in Phase:
      assert all(onset <= i <= offset for i in idx(select_frames(video(onset, apex, offset), phase)))


def test_missing_frames_reported():
  v = video(10, 15, 30, frames=[n for n in range(10, 31) if n not in (14, 28)])
  assert missing_frames(v, Phase.MFS) == [14, 28]
  assert missing_frames(v, Phase.AF) == []


def test_parse_lists_valid_values():
  assert Phase.parse(" MFS ") is Phase.MFS
  with pytest.raises(ValueError, match="af, kfs, mfs"):
    Phase.parse("xfs")
