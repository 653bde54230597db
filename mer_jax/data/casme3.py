r"""CAS(ME)^3 part A on disk: the ME label sheet and the colour frame folders.

  python -m mer_jax.data.summary --dataset casme3 ~/casme3/part_A

Layout (ROOT holds the sheet and the subject folders; the release's
ROOT/annotation/ and ROOT/data/part_A/ subfolders are followed too):
  ROOT/{subject}/{filename}/color/{frame}.jpg        subject e.g. spNO.1, filename a, b, ...
  ROOT/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx     (or another version, or a CSV export)

Columns, by name in any case: Subject, Filename, Onset, Apex, Offset, AU,
Objective class, emotion. Quirks handled (each one met is in `VideoSet.notes`):
- a filename repeats within a subject (one long recording holds several
  MEs): every clip of a repeated name gets the episode "{filename}_{k}", k =
  1, 2, ... in onset order (then sheet order), so ids are unique and do not
  depend on the sheet's row order; a unique name stays as it is;
- Subject as "spNO.1" or 1; folder names in any case; emotions in any case
  with the usual variants ("happiness" -> "happy"); a missing apex: the
  middle frame, `apex_rule` "middle"; stray files and depth/other folders
  beside color/.
Native labels: labels.NATIVE["casme3"]; its 4- and 3-class groupings are the
label schemes casme3_4 and casme3_3. 30 fps colour frames.
"""
from __future__ import annotations

import collections
import logging
import pathlib
import re

from mer_jax.data import labels, sheets
from mer_jax.data.videos import Video, VideoSet

SHEET_NAME = "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"
COLOR_DIR = "color"

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
CAS(ME)^3 is licensed and cannot be downloaded automatically. Request it from
Fu Xiaolan's group (http://casme.psych.ac.cn/casme/e4), and put part A's ME
label sheet and its frames in one directory DIR:
  DIR/{SHEET_NAME}
  DIR/spNO.1/a/{COLOR_DIR}/123.jpg ...   (DIR/annotation/ and DIR/data/part_A/ also work)
Check it with: python -m mer_jax.data.summary --dataset casme3 DIR
"""

_FRAME_RE = re.compile(r"^0*(\d+)$")
_CANONICAL_HEADER = {"subject": "Subject", "filename": "Filename", "onset": "Onset",
                     "apex": "Apex", "offset": "Offset", "action_units": "AU",
                     "emotion": "emotion"}
_EMOTION_ALIASES = {"happiness": "happy", "sadness": "sad", "angry": "anger",
                    "other": "others", "surprised": "surprise", "disgusted": "disgust",
                    "fearful": "fear"}
_SUBJECT_RE = re.compile(r"(?:spno\.?)?\s*0*(\d+)(?:\.0+)?", re.IGNORECASE)


class Casme3Error(sheets.DatasetError):
  """A problem with the user's CAS(ME)^3 copy; the message says what to do."""


def _subject_key(name: str) -> str:
  m = _SUBJECT_RE.fullmatch(name.strip())
  return m.group(1) if m else name.strip().lower()


def _frames_root(root: pathlib.Path, notes: list[str]) -> pathlib.Path:
  """ROOT, or the release's ROOT/data/part_A (ROOT/data, ROOT/part_A): the first holding spNO.*"""
  if not root.is_dir():
    raise Casme3Error(f"CAS(ME)^3 directory {root} does not exist.\n\n"
                      + MANUAL_DOWNLOAD_INSTRUCTIONS)
  for d in (root, root / "data" / "part_A", root / "data", root / "part_A"):
    if any(_SUBJECT_RE.fullmatch(p.name.strip()) for p in sheets.subdirs(d)):
      if d != root:
        notes.append(f"subject folders read from {d}")
      return d
  raise Casme3Error(f"No subject folders (spNO.N) in {root}.\n\n" + MANUAL_DOWNLOAD_INSTRUCTIONS)


def find_sheet(root: pathlib.Path, notes: list[str]) -> pathlib.Path:
  """The label sheet in ROOT or ROOT/annotation: the newest of several."""
  return sheets.pick_sheet((root, root / "annotation"), ("cas(me)3", "casme3", "me_label"),
                           notes, f"No CAS(ME)^3 label sheet ({SHEET_NAME} or a CSV export) in "
                           f"{root}.\n\n" + MANUAL_DOWNLOAD_INSTRUCTIONS, Casme3Error)


def _find(parent: pathlib.Path, name: str, key, what: str, where: str) -> pathlib.Path:
  return sheets.one_dir(sheets.find_dir(parent, name, key), parent / name, what, where,
                        f"DIR/spNO.1/a/{COLOR_DIR}/N.jpg", Casme3Error)


def episodes(rows: list[tuple[str, str, int, int]]) -> list[str]:
  """The episode name of each (subject, filename, onset, sheet row): the filename, or
  "{filename}_{k}" (k from 1 in onset, then row, order) where it repeats within the subject."""
  groups = collections.defaultdict(list)
  for i, (subject, filename, onset, row) in enumerate(rows):
    groups[subject, filename.lower()].append((onset, row, i))
  out = [f for _, f, _, _ in rows]
  for members in groups.values():
    if len(members) > 1:
      for k, (_, _, i) in enumerate(sorted(members), start=1):
        out[i] = f"{rows[i][1]}_{k}"
  return out


def load_casme3(root: str | pathlib.Path, sheet: str | pathlib.Path | None = None) -> VideoSet:
  """All ME clips of a CAS(ME)^3 part A copy, in sheet order, with the quirks met in `notes`."""
  root = pathlib.Path(root).expanduser()
  notes: list[str] = []
  frames_root = _frames_root(root, notes)
  sheet = pathlib.Path(sheet).expanduser() if sheet else find_sheet(root, notes)
  records = sheets.read_records(sheet, notes, _CANONICAL_HEADER, Casme3Error,
                                "CAS(ME)^3 part A ME label sheet")
  coded = []
  for i, cells in records:
    where = f"{sheet.name} row {i}"
    filename = sheets.cell_text(cells["filename"])
    subject = sheets.cell_text(cells["subject"])
    if not filename or not _SUBJECT_RE.fullmatch(subject):
      raise Casme3Error(f"{where}: Subject {cells['subject']!r} / Filename {cells['filename']!r} "
                        "must be like spNO.1 / a; fix the row or delete it.")
    where = f"{where} ({subject} {filename})"
    onset, apex, offset = sheets.key_frames(cells, where, Casme3Error,
                                            ("Onset", "Apex", "Offset"))
    apex, rule = sheets.apex_or_middle(apex, onset, offset, where, notes, "Apex", cells["apex"])
    emotion = sheets.native_emotion(cells["emotion"], labels.NATIVE["casme3"], _EMOTION_ALIASES,
                                    where, Casme3Error)
    subject_dir = _find(frames_root, subject, _subject_key, "subject", where)
    video_dir = _find(subject_dir, filename, lambda n: n.strip().lower(), "video", where)
    coded.append((i, where, subject_dir.name, video_dir, onset, apex, offset, emotion, rule,
                  sheets.cell_text(cells.get("action_units"))))
  names = episodes([(c[2], c[3].name, c[4], c[0]) for c in coded])
  renamed = [(f"{c[2]}/{c[3].name}", n) for c, n in zip(coded, names) if n != c[3].name]
  if renamed:
    notes.append(f"{len(renamed)} clips share a filename within their subject; suffixed: "
                 + sheets.examples(renamed))
  videos, scanned = [], {}
  for (i, where, subject, video_dir, onset, apex, offset, emotion, rule, aus), episode \
      in zip(coded, names):
    color = video_dir / COLOR_DIR
    if not color.is_dir():
      raise Casme3Error(f"{where}: no {COLOR_DIR}/ folder in {video_dir}; the colour frames "
                        f"belong in {color}/N.jpg.")
    if color not in scanned:  # a recording's frames serve every clip cut from it
      scanned[color], stray = sheets.scan_frames(color, _FRAME_RE, Casme3Error)
      if stray:
        notes.append(f"{subject}/{video_dir.name}/{COLOR_DIR}: ignored non-frame files {stray}")
    frames = {n: p for n, p in scanned[color].items() if onset <= n <= offset}
    if not frames:
      raise Casme3Error(f"{where}: no frames {onset}..{offset} in {color}.")
    sheets.note_key_frames(frames, onset, apex, offset, where, notes)
    videos.append(Video(dataset="casme3", subject=subject, episode=episode, onset=onset,
                        apex=apex, offset=offset, emotion=emotion, frames=frames,
                        action_units=aus, apex_rule=rule))
  sheets.check_unique(videos, [c[0] for c in coded], sheet, Casme3Error)
  for n in notes:
    logging.info("CAS(ME)^3: %s", n)
  return VideoSet(dataset="casme3", root=root, sheet=sheet, videos=videos, notes=notes)
