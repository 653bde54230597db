r"""CASME II on disk: the coding sheet and the frame folders.

Every quirk of the distributed dataset is handled here, once; the rest of the
system sees only clean `Video` records (mer_jax.data.videos).

  python -m mer_jax.data.summary /path/to/CASME2     # summary of a copy

Layout (as distributed):
  ROOT/CASME2_RAW_selected/subNN/EPxx_yy[f]/img{N}.jpg   N = absolute frame number
  ROOT/CASME2-coding-*.xlsx  (or a CSV export of it)

Quirks handled (each one that occurs is listed in `VideoSet.notes`):
- columns are found by name (case, spaces, '_' and small variants such as
  "Onset Frame" tolerated), never by position: the 20140508 sheet, the
  20190701 sheet with two blank "Unnamed" columns, "updated" variants, CSV
  exports (',' or ';' separated, UTF-8 or a legacy code page), a title row
  above the header, the table on another worksheet;
- several sheets in ROOT: the newest date in the name wins (see `find_sheet`);
- the frames zip unpacked one level too deep (ROOT/CASME2_RAW_selected/
  CASME2_RAW_selected/subNN) is followed; ROOT pointing at the subject
  folders themselves gets an error saying to pass the parent;
- ApexFrame given as '/' (sub04 EP12_01f): the apex falls back to the middle
  frame of onset..offset, (onset + offset) // 2, and `apex_rule` is "middle";
- apex == onset (sub05 EP09_05f) is valid (the MFS windows then overlap);
- emotions in any case or with spaces; names with trailing spaces; Subject as
  1, "01" or "sub01"; Filename vs folder differing in case, whitespace or the
  trailing 'f'; subject folders sub1 vs sub01;
- frame numbers that do not start at 1; extra frames and stray non-image files
  (a `Desktop - Shortcut.lnk` ships inside sub01); key frames without a file
  are noted.
Errors (`Casme2Error`) name the row, column or folder and say what to do.

One file, though long: it is the only place that knows CASME II's quirks, and
reading them together (sheet, folders, frames) is how they are checked.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import re

from mer_jax.data import labels, sheets
from mer_jax.data.videos import Video, VideoSet

FRAMES_DIR = "CASME2_RAW_selected"
SHEET_GLOB = "CASME2-coding-*"

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
CASME II is licensed and cannot be downloaded automatically.

1. Request it from its authors, Fu Xiaolan's group at the Institute of
   Psychology, Chinese Academy of Sciences (CASME II page:
   http://casme.psych.ac.cn/casme/e2), by signing their licence agreement.
2. From what they send, two things are needed (the cropped frames and the
   compressed videos are not used):
     - {FRAMES_DIR}.zip: the raw 640x480 frames, unzipped so that
       {FRAMES_DIR}/subNN/EPxx_yy[f]/img<N>.jpg exist (unzipped one level
       deeper, {FRAMES_DIR}/{FRAMES_DIR}/subNN, works too);
     - the coding sheet CASME2-coding-20140508.xlsx (or the 20190701 /
       'updated' version, or a CSV export of it).
   Put both in one directory DIR (the manual dir, e.g. ~/casme2):
     DIR/{FRAMES_DIR}/sub01/EP02_01f/img46.jpg ...
     DIR/CASME2-coding-20140508.xlsx
   Check it with: python -m mer_jax.data.summary DIR
3. Pass DIR as the manual dir, e.g.
     python -m mer_jax.data.build --configs m2_mfs --manual_dir DIR
     python -m mer_jax.train --config configs/pool_m36_mfs.py --config.data.manual_dir=DIR
To try everything without CASME II, write the synthetic stand-in:
     python -m mer_jax.data.synthetic --out DIR
"""

_FRAME_RE = re.compile(r"^img(\d+)$", re.IGNORECASE)

_CANONICAL_HEADER = {"subject": "Subject", "filename": "Filename", "onset": "OnsetFrame",
                     "apex": "ApexFrame", "offset": "OffsetFrame",
                     "action_units": "Action Units", "emotion": "Estimated Emotion"}
_EMOTION_ALIASES = {"happy": "happiness", "surprised": "surprise", "sad": "sadness",
                    "disgusted": "disgust", "other": "others", "repressed": "repression",
                    "fearful": "fear"}


class Casme2Error(sheets.DatasetError):
  """A problem with the user's CASME II copy; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class SheetRow:
  """One row of the coding sheet, validated but not yet matched to a folder."""
  row: int                     # 1-based row number in the sheet (header = 1)
  subject: str                 # normalised folder name, "sub01"
  filename: str                # stripped
  onset: int
  apex: int | None             # None where the sheet says '/'
  offset: int
  action_units: str
  emotion: str                 # canonical, one of labels.EMOTIONS


def find_sheet(root: str | pathlib.Path) -> pathlib.Path:
  """The coding sheet in `root`.

  Several versions circulate (20140508, 20190701, 'updated' copies, CSV
  exports), and later ones fix codings, so the choice is: the newest 8-digit
  date in the file name, then a name containing 'updated', then xlsx over csv
  (the original rather than an export), then the name (sheets.sheet_candidates).
  Any `*coding*.xlsx` or `.csv` in `root` counts; Excel's `~$` lock files do
  not. Pass `sheet=` to `load_casme2` to choose another.
  """
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise Casme2Error(f"CASME II directory {root} does not exist.\n\n"
                      + MANUAL_DOWNLOAD_INSTRUCTIONS)
  found = sheets.sheet_candidates(root, ("coding",))
  if not found:
    raise Casme2Error(f"No coding sheet ({SHEET_GLOB}.xlsx or .csv) in {root}.\n\n"
                      + MANUAL_DOWNLOAD_INSTRUCTIONS)
  return found[0]


def _subject_name(value, where: str) -> str:
  s = str(value if value is not None else "").strip().lower()
  m = re.fullmatch(r"(?:sub)?\s*0*(\d+)(?:\.0+)?", s)
  if not m:
    raise Casme2Error(f"{where}: Subject {value!r} is not a subject number like 1, 01 or sub01.")
  return f"sub{int(m.group(1)):02d}"


def read_coding_sheet(path: str | pathlib.Path,
                      notes: list[str] | None = None) -> list[SheetRow]:
  """The sheet's rows, validated and normalised; blank rows are skipped.

  The quirks met while reading are appended to `notes` when given.
  """
  path = pathlib.Path(path).expanduser()
  notes = notes if notes is not None else []
  records = sheets.read_records(path, notes, _CANONICAL_HEADER,
                                Casme2Error, "CASME II coding sheet")
  rows, renamed_emotions, renamed_files = [], [], []
  for i, cells in records:
    where = f"{path.name} row {i}"
    filename = sheets.cell_text(cells["filename"])
    if not filename:
      raise Casme2Error(f"{where}: Filename is empty; fill it in or delete the row.")
    onset, apex, offset = sheets.key_frames(cells, where, Casme2Error)
    emotion = sheets.native_emotion(cells["emotion"], labels.EMOTIONS, _EMOTION_ALIASES,
                                    where, Casme2Error)
    if str(cells["emotion"]) != emotion:
      renamed_emotions.append((cells["emotion"], emotion))
    if str(cells["filename"]) != filename:
      renamed_files.append((cells["filename"], filename))
    rows.append(SheetRow(
        row=i, subject=_subject_name(cells["subject"], where), filename=filename,
        onset=onset, apex=apex, offset=offset,
        action_units=sheets.cell_text(cells.get("action_units")), emotion=emotion))
  if renamed_emotions:
    notes.append(f"{path.name}: emotion labels normalised: {sheets.examples(renamed_emotions)}")
  if renamed_files:
    notes.append(f"{path.name}: spaces stripped from Filename: {sheets.examples(renamed_files)}")
  return rows


def _subject_key(name: str) -> str:
  m = re.fullmatch(r"sub\s*0*(\d+)", name.strip().lower())
  return f"sub{int(m.group(1)):02d}" if m else name.strip().lower()


def _episode_key(name: str) -> str:
  return name.strip().lower()


def _find_dir(parent: pathlib.Path, name: str, what: str, where: str) -> pathlib.Path:
  """`parent/name`, tolerating case, spaces, sub1 vs sub01 and EP.._.. vs EP.._..f."""
  if what == "subject":
    matches = sheets.find_dir(parent, name, _subject_key)
  else:
    matches = sheets.find_dir(parent, name, _episode_key)
    if not matches:  # the sheet and the folders disagree on the trailing 'f'
      matches = sheets.find_dir(parent, name, lambda n: _episode_key(n).rstrip("f"))
  return sheets.one_dir(matches, parent / name, what, where,
                        f"DIR/{FRAMES_DIR}/subNN/EPxx_yy/imgN.jpg", Casme2Error)


def _has_subject_dirs(d: pathlib.Path) -> bool:
  return any(p.is_dir() and re.fullmatch(r"sub\s*\d+", p.name.strip().lower())
             for p in d.iterdir())


def _frames_root(root: pathlib.Path, notes: list[str]) -> pathlib.Path:
  """ROOT/CASME2_RAW_selected, also where unzipping nested it one level deeper."""
  frames_root = root / FRAMES_DIR
  nested = frames_root / FRAMES_DIR
  if frames_root.is_dir() and nested.is_dir() and not _has_subject_dirs(frames_root):
    notes.append(f"frames found one level deeper, in {nested}")
    return nested
  if frames_root.is_dir():
    return frames_root
  if root.is_dir() and _has_subject_dirs(root):
    raise Casme2Error(f"{root} holds the subject folders itself; pass its parent, the "
                      f"directory that holds {FRAMES_DIR}/ and the coding sheet.")
  raise Casme2Error(f"{frames_root} not found.\n\n" + MANUAL_DOWNLOAD_INSTRUCTIONS)


def load_casme2(root: str | pathlib.Path,
                sheet: str | pathlib.Path | None = None) -> VideoSet:
  """All coded videos of a CASME II copy, in sheet order, with the quirks met in `notes`.

  Apex fallback: where the sheet's ApexFrame is '/', the apex is the middle
  frame of onset..offset, (onset + offset) // 2, and `apex_rule` is "middle",
  so every phase (all of which need an apex) can use the video.
  """
  root = pathlib.Path(root).expanduser()
  notes: list[str] = []
  frames_root = _frames_root(root, notes)
  if sheet is None:
    sheet = find_sheet(root)
    others = [p.name for p in sheets.sheet_candidates(root, ("coding",))[1:]]
    if others:
      notes.append(f"several coding sheets; using {sheet.name} (newest date, then "
                   f"'updated', then xlsx), not {others}")
  sheet = pathlib.Path(sheet).expanduser()
  videos, rows, stray_reported = [], [], set()
  late_start, outside = 0, 0
  for r in read_coding_sheet(sheet, notes):
    where = f"{sheet.name} row {r.row} ({r.subject} {r.filename})"
    subject_dir = _find_dir(frames_root, r.subject, "subject", where)
    video_dir = _find_dir(subject_dir, r.filename, "video", where)
    if video_dir.name != r.filename:
      notes.append(f"{where}: sheet name {r.filename!r} matched folder {video_dir.name!r}")
    frames, stray = sheets.scan_frames(video_dir, _FRAME_RE, Casme2Error)
    if stray and video_dir not in stray_reported:
      stray_reported.add(video_dir)
      notes.append(f"{subject_dir.name}/{video_dir.name}: ignored non-frame files {stray}")
    if not frames:
      raise Casme2Error(f"{where}: no imgN.jpg frames in {video_dir}.")
    apex, rule = sheets.apex_or_middle(r.apex, r.onset, r.offset, where, notes, cell="/")
    sheets.note_key_frames(frames, r.onset, apex, r.offset, where, notes)
    late_start += min(frames) > 1
    outside += min(frames) < r.onset or max(frames) > r.offset
    video = Video(dataset="casme2", subject=subject_dir.name, episode=video_dir.name,
                  onset=r.onset, apex=apex, offset=r.offset, emotion=r.emotion, frames=frames,
                  action_units=r.action_units, apex_rule=rule)
    videos.append(video)
    rows.append(r.row)
  sheets.check_unique(videos, rows, sheet, Casme2Error)
  if late_start:
    notes.append(f"{late_start} videos: frame numbers start above 1 (absolute numbers kept)")
  if outside:
    notes.append(f"{outside} videos: frames before onset or after offset (kept in `frames`, "
                 "used by no phase)")
  # Subject-level stray files (e.g. sub01's 'Desktop - Shortcut.lnk').
  sheets.note_stray_files(frames_root, notes)
  for n in notes:
    logging.info("CASME II: %s", n)
  return VideoSet(dataset="casme2", root=root, sheet=sheet, videos=videos, notes=notes)

