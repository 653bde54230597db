r"""CASME II on disk: the coding sheet and the frame folders.

Every quirk of the distributed dataset is handled here, once; the rest of the
system sees only clean `Video` records.

  python -m mer_jax.data.casme2 /path/to/CASME2     # summary of a copy

Layout (as distributed):
  ROOT/CASME2_RAW_selected/subNN/EPxx_yy[f]/img{N}.jpg   N = absolute frame number
  ROOT/CASME2-coding-*.xlsx  (or a CSV export of it)

Quirks handled (each one that occurs is listed in `Casme2Index.notes`):
- columns are found by name (case, spaces and small variants such as
  "Onset Frame" tolerated), never by position: the 20140508 sheet, the
  20190701 sheet with two blank "Unnamed" columns and "updated" variants;
- ApexFrame given as '/' (sub04 EP12_01f): the apex falls back to the middle
  frame of onset..offset, (onset + offset) // 2, and `apex_estimated` is set;
- apex == onset (sub05 EP09_05f) is valid (the MFS windows then overlap);
- emotions in any case or with spaces; names with trailing spaces; Subject as
  1, "01" or "sub01"; Filename vs folder differing in case or whitespace;
- frame numbers that do not start at 1; extra frames and stray non-image files
  (a `Desktop - Shortcut.lnk` ships inside sub01).
"""
from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import logging
import pathlib
import re
import sys

# Label order of the TFDS ClassLabel and of every model head.
EMOTIONS = ("happiness", "disgust", "surprise", "repression", "sadness", "fear", "others")

FRAMES_DIR = "CASME2_RAW_selected"
SHEET_GLOB = "CASME2-coding-*"

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
CASME II is licensed and cannot be downloaded automatically.

1. Request it from its authors (Fu Xiaolan's group, Institute of Psychology,
   Chinese Academy of Sciences: http://casme.psych.ac.cn/casme/e2) by signing
   their licence agreement.
2. Put the distributed files in one directory, laid out as:
     DIR/{FRAMES_DIR}/sub01/EP02_01f/img46.jpg ...   (the raw 640x480 frames)
     DIR/CASME2-coding-20140508.xlsx                     (or -20190701 / an 'updated'
                                                          version, or a CSV export)
3. Pass DIR as the manual dir, e.g.
     tfds build datasets/casme2 --config m2_mfs --manual_dir DIR
     python -m mer_jax.train --config configs/pool_m36_mfs.py --config.data.manual_dir=DIR
To try everything without CASME II, write the synthetic stand-in:
     python -m mer_jax.data.synthetic --out DIR
"""

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
_FRAME_RE = re.compile(r"^img(\d+)$", re.IGNORECASE)

# Canonical column -> accepted header spellings (compared without case/space/_).
_COLUMNS = {
    "subject": ("subject", "sub"),
    "filename": ("filename", "file", "episode"),
    "onset": ("onsetframe", "onset"),
    "apex": ("apexframe", "apex"),
    "offset": ("offsetframe", "offset"),
    "action_units": ("actionunits", "aus", "au"),
    "emotion": ("estimatedemotion", "emotion"),
}
_REQUIRED = ("subject", "filename", "onset", "apex", "offset", "emotion")


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


@dataclasses.dataclass(frozen=True)
class SheetRow:
  row: int                     # 1-based row number in the sheet (header = 1)
  subject: str                 # normalised folder name, "sub01"
  filename: str                # stripped
  onset: int
  apex: int | None             # None where the sheet says '/'
  offset: int
  action_units: str
  emotion: str                 # canonical, one of EMOTIONS


@dataclasses.dataclass
class Casme2Index:
  root: pathlib.Path
  sheet: pathlib.Path
  videos: list[Video]
  notes: list[str]


def _norm_header(h) -> str:
  return re.sub(r"[\s_\-]+", "", str(h or "")).lower()


def find_sheet(root: str | pathlib.Path) -> pathlib.Path:
  """The coding sheet in `root`: the newest-dated xlsx, else csv; 'updated' wins a tie."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise Casme2Error(f"CASME II directory {root} does not exist.\n\n"
                      + MANUAL_DOWNLOAD_INSTRUCTIONS)
  found = [p for p in root.glob(SHEET_GLOB)
           if p.suffix.lower() in (".xlsx", ".csv") and not p.name.startswith("~$")]
  if not found:
    raise Casme2Error(f"No coding sheet ({SHEET_GLOB}.xlsx or .csv) in {root}.\n\n"
                      + MANUAL_DOWNLOAD_INSTRUCTIONS)

  def rank(p):
    date = max((int(d) for d in re.findall(r"\d{8}", p.name)), default=0)
    return (p.suffix.lower() == ".xlsx", date, "updated" in p.name.lower(), p.name)

  return max(found, key=rank)


def _read_table(path: pathlib.Path) -> list[list]:
  if path.suffix.lower() == ".csv":
    with open(path, newline="", encoding="utf-8-sig") as f:
      return [row for row in csv.reader(f)]
  try:
    import openpyxl
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
  except Exception as e:  # a corrupt or non-xlsx file
    raise Casme2Error(f"Cannot read the coding sheet {path}: {e}. Re-copy it, or export it "
                      "to CSV and pass that.") from e
  try:
    return [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
  finally:
    wb.close()


def _header_map(header: list, path) -> dict[str, int]:
  normed = [_norm_header(h) for h in header]
  cols = {}
  for name, spellings in _COLUMNS.items():
    for s in spellings:
      if s in normed:
        cols[name] = normed.index(s)
        break
  missing = [c for c in _REQUIRED if c not in cols]
  if missing:
    shown = [str(h) for h in header if h not in (None, "")]
    raise Casme2Error(
        f"Coding sheet {path} has no column for {', '.join(missing)}; columns found: "
        f"{shown}. Expected Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame, "
        "Action Units, Estimated Emotion.")
  return cols


def _subject_name(value, where: str) -> str:
  s = str(value).strip().lower()
  m = re.fullmatch(r"(?:sub)?0*(\d+)(?:\.0)?", s)
  if not m:
    raise Casme2Error(f"{where}: Subject {value!r} is not a subject number like 1 or sub01.")
  return f"sub{int(m.group(1)):02d}"


def _frame_number(value, column: str, where: str) -> int | None:
  s = str(value).strip() if value is not None else ""
  if s in ("/", "", "-", "nan", "None"):
    return None
  try:
    f = float(s)
  except ValueError:
    f = float("nan")
  if f != f or f != int(f):
    raise Casme2Error(f"{where}: {column} {value!r} is not a frame number.")
  return int(f)


def _emotion(value, where: str) -> str:
  e = re.sub(r"\s+", " ", str(value or "")).strip().lower()
  aliases = {"happy": "happiness", "surprised": "surprise", "sad": "sadness",
             "disgusted": "disgust", "other": "others", "repressed": "repression"}
  e = aliases.get(e, e)
  if e not in EMOTIONS:
    raise Casme2Error(f"{where}: unknown emotion {value!r}; valid: {', '.join(EMOTIONS)}.")
  return e


def read_coding_sheet(path: str | pathlib.Path) -> list[SheetRow]:
  """The sheet's rows, validated; blank rows are skipped."""
  path = pathlib.Path(path)
  table = _read_table(path)
  header_at = next((i for i, r in enumerate(table)
                    if "filename" in [_norm_header(c) for c in r]), None)
  if header_at is None:
    raise Casme2Error(f"Coding sheet {path} has no header row with a 'Filename' column.")
  cols = _header_map(table[header_at], path)
  rows = []
  for i, r in enumerate(table[header_at + 1:], start=header_at + 2):
    cell = lambda c: r[cols[c]] if cols.get(c) is not None and cols[c] < len(r) else None
    if all(v in (None, "") for v in r):
      continue
    where = f"{path.name} row {i}"
    onset = _frame_number(cell("onset"), "OnsetFrame", where)
    apex = _frame_number(cell("apex"), "ApexFrame", where)
    offset = _frame_number(cell("offset"), "OffsetFrame", where)
    if onset is None or offset is None:
      raise Casme2Error(f"{where}: OnsetFrame and OffsetFrame must be frame numbers.")
    if onset > offset:
      raise Casme2Error(f"{where}: OnsetFrame {onset} is after OffsetFrame {offset}.")
    if apex is not None and not onset <= apex <= offset:
      raise Casme2Error(f"{where}: ApexFrame {apex} is outside onset..offset "
                        f"({onset}..{offset}).")
    rows.append(SheetRow(
        row=i, subject=_subject_name(cell("subject"), where),
        filename=str(cell("filename")).strip(), onset=onset, apex=apex, offset=offset,
        action_units=str(cell("action_units") or "").strip(),
        emotion=_emotion(cell("emotion"), where)))
  if not rows:
    raise Casme2Error(f"Coding sheet {path} has no rows.")
  return rows


def _scan_frames(folder: pathlib.Path) -> tuple[dict[int, pathlib.Path], list[str]]:
  frames, stray = {}, []
  for p in folder.iterdir():
    m = _FRAME_RE.match(p.stem)
    if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES and m:
      frames[int(m.group(1))] = p
    else:
      stray.append(p.name)
  return dict(sorted(frames.items())), stray


def _find_dir(parent: pathlib.Path, name: str, what: str, where: str) -> pathlib.Path:
  exact = parent / name
  if exact.is_dir():
    return exact
  key = name.strip().lower()
  matches = [p for p in parent.iterdir() if p.is_dir() and p.name.strip().lower() == key]
  if not matches and what == "video":  # EP02_01 vs EP02_01f
    matches = [p for p in parent.iterdir() if p.is_dir()
               and p.name.strip().lower().rstrip("f") == key.rstrip("f")]
  if len(matches) == 1:
    return matches[0]
  raise Casme2Error(f"{where}: {what} folder {exact} not found"
                    + (f" (ambiguous: {[m.name for m in matches]})" if matches else "")
                    + ". Check that the frames are laid out as DIR/"
                    f"{FRAMES_DIR}/subNN/EPxx_yy/imgN.jpg.")


def load_casme2(root: str | pathlib.Path, sheet: str | pathlib.Path | None = None) -> Casme2Index:
  """All coded videos of a CASME II copy, with the quirks met listed in `notes`."""
  root = pathlib.Path(root).expanduser()
  frames_root = root / FRAMES_DIR
  if not frames_root.is_dir():
    raise Casme2Error(f"{frames_root} not found.\n\n" + MANUAL_DOWNLOAD_INSTRUCTIONS)
  sheet = pathlib.Path(sheet) if sheet else find_sheet(root)
  notes: list[str] = []
  videos, seen = [], {}
  stray_reported = set()
  for r in read_coding_sheet(sheet):
    where = f"{sheet.name} row {r.row} ({r.subject} {r.filename})"
    subject_dir = _find_dir(frames_root, r.subject, "subject", where)
    video_dir = _find_dir(subject_dir, r.filename, "video", where)
    if video_dir.name != r.filename:
      notes.append(f"{where}: sheet name {r.filename!r} matched folder {video_dir.name!r}")
    frames, stray = _scan_frames(video_dir)
    if stray and video_dir not in stray_reported:
      stray_reported.add(video_dir)
      notes.append(f"{subject_dir.name}/{video_dir.name}: ignored non-frame files {stray}")
    if not frames:
      raise Casme2Error(f"{where}: no imgN.jpg frames in {video_dir}.")
    apex, estimated = r.apex, False
    if apex is None:
      apex, estimated = (r.onset + r.offset) // 2, True
      notes.append(f"{where}: ApexFrame missing ('/'); using the middle frame {apex} of "
                   f"{r.onset}..{r.offset}")
    if apex == r.onset:
      notes.append(f"{where}: apex == onset ({apex}); MFS windows overlap")
    video = Video(subject=subject_dir.name, episode=video_dir.name, onset=r.onset, apex=apex,
                  offset=r.offset, emotion=r.emotion, frames=frames,
                  action_units=r.action_units, apex_estimated=estimated)
    if video.video_id in seen:
      raise Casme2Error(f"{where}: video {video.video_id} is coded twice (also row "
                        f"{seen[video.video_id]}).")
    seen[video.video_id] = r.row
    videos.append(video)
  # Subject-level stray files (e.g. sub01's 'Desktop - Shortcut.lnk').
  for d in sorted(frames_root.iterdir()):
    if d.is_dir():
      stray = sorted(p.name for p in d.iterdir() if p.is_file())
      if stray:
        notes.append(f"{d.name}: ignored stray files {stray}")
  for n in notes:
    logging.info("CASME II: %s", n)
  return Casme2Index(root=root, sheet=sheet, videos=videos, notes=notes)


def summary(index: Casme2Index) -> str:
  by_emotion = collections.Counter(v.emotion for v in index.videos)
  subjects = collections.Counter(v.subject for v in index.videos)
  lines = [f"{len(index.videos)} videos of {len(subjects)} subjects (sheet {index.sheet.name})",
           "per emotion: " + ", ".join(f"{e} {by_emotion[e]}" for e in EMOTIONS),
           "per subject: " + ", ".join(f"{s} {n}" for s, n in sorted(subjects.items()))]
  if index.notes:
    lines += ["notes:"] + [f"  {n}" for n in index.notes]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description="Summarise a CASME II copy.")
  parser.add_argument("root", help="directory holding CASME2_RAW_selected/ and the coding sheet")
  parser.add_argument("--sheet", help="coding sheet to use (default: found in root)")
  args = parser.parse_args(argv)
  try:
    print(summary(load_casme2(args.root, args.sheet)))
  except Casme2Error as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
