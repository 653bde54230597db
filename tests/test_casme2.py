"""The coding-sheet reader and CASME II's quirks."""
import csv
import pathlib

import openpyxl
import pytest

from mer_jax.data import casme2
from mer_jax.data.casme2 import Casme2Error

HEADER_2014 = ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame",
               "Action Units", "Estimated Emotion"]
# The 20190701 sheet has two blank columns, which readers see as "Unnamed".
HEADER_2019 = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
               "Action Units", "Estimated Emotion"]


def _row_2019(r):
  return [r[0], r[1], None, r[2], r[3], r[4], None, r[5], r[6]]


def make_tree(root: pathlib.Path, rows, header=HEADER_2014, fmt="xlsx",
              name="CASME2-coding-20140508", first_frame=None, folders=None):
  """A CASME II copy: frame folders (frames onset-2..offset+2) and a coding sheet."""
  frames_root = root / casme2.FRAMES_DIR
  for i, (subject, filename, onset, apex, offset, *_ ) in enumerate(rows):
    folder = (folders or {}).get(i, str(filename).strip())
    d = frames_root / f"sub{int(str(subject).lower().replace('sub', '')):02d}" / folder
    d.mkdir(parents=True, exist_ok=True)
    for n in range(onset - 2 if first_frame is None else first_frame, offset + 3):
      (d / f"img{n}.jpg").write_bytes(b"x")
  table = [header] + [(_row_2019(r) if header is HEADER_2019 else list(r)) for r in rows]
  path = root / f"{name}.{fmt}"
  if fmt == "xlsx":
    wb = openpyxl.Workbook()
    for r in table:
      wb.active.append(r)
    wb.save(path)
  else:
    with open(path, "w", newline="") as f:
      csv.writer(f).writerows(table)
  return path


ROWS = [
    (1, "EP02_01f", 46, 59, 86, "12", "happiness"),
    (1, "EP03_02", 131, 139, 161, "4", "Disgust "),
    (4, "EP12_01f", 100, "/", 120, "4", "others"),
    (5, "EP09_05f", 30, 30, 50, "1+2", "SURPRISE"),
    (17, "EP15_03f ", 5, 9, 20, "14", "repression"),
]


@pytest.mark.parametrize("header", [HEADER_2014, HEADER_2019], ids=["2014", "2019"])
@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_reads_every_sheet_version_and_quirk(tmp_path, header, fmt):
  make_tree(tmp_path, ROWS, header=header, fmt=fmt)
  (tmp_path / casme2.FRAMES_DIR / "sub01" / "Desktop - Shortcut.lnk").write_bytes(b"lnk")
  (tmp_path / casme2.FRAMES_DIR / "sub01" / "EP02_01f" / "Thumbs.db").write_bytes(b"")
  index = casme2.load_casme2(tmp_path)
  by_id = {v.video_id: v for v in index.videos}
  assert list(by_id) == ["sub01/EP02_01f", "sub01/EP03_02", "sub04/EP12_01f",
                         "sub05/EP09_05f", "sub17/EP15_03f"]
  v = by_id["sub01/EP02_01f"]
  assert (v.onset, v.apex, v.offset, v.emotion, v.label) == (46, 59, 86, "happiness", 0)
  assert min(v.frames) == 44 and max(v.frames) == 88 and v.frames[46].name == "img46.jpg"
  assert by_id["sub01/EP03_02"].emotion == "disgust"
  slash = by_id["sub04/EP12_01f"]
  assert slash.apex == 110 and slash.apex_estimated
  assert by_id["sub05/EP09_05f"].apex == by_id["sub05/EP09_05f"].onset == 30
  assert by_id["sub05/EP09_05f"].emotion == "surprise"
  assert str(v.action_units) == "12"
  notes = "\n".join(index.notes)
  assert "'/'" in notes and "middle frame 110" in notes
  assert "Desktop - Shortcut.lnk" in notes and "Thumbs.db" in notes
  assert "apex == onset" in notes


def test_find_sheet_prefers_newest_xlsx(tmp_path):
  for n in ["CASME2-coding-20140508.xlsx", "CASME2-coding-20190701.xlsx",
            "CASME2-coding-20190701.csv"]:
    (tmp_path / n).write_bytes(b"")
  assert casme2.find_sheet(tmp_path).name == "CASME2-coding-20190701.xlsx"


def test_folder_name_mismatch_is_matched_and_noted(tmp_path):
  make_tree(tmp_path, [(2, "ep01_01F", 1, 3, 9, "", "fear")], folders={0: "EP01_01f"})
  index = casme2.load_casme2(tmp_path)
  assert index.videos[0].episode == "EP01_01f"
  assert any("matched folder" in n for n in index.notes)


@pytest.mark.parametrize("subject", [3, "3", "03", "sub03", " Sub03 "])
def test_subject_spellings(subject):
  assert casme2._subject_name(subject, "x") == "sub03"


def test_unknown_emotion_names_row_and_value(tmp_path):
  make_tree(tmp_path, [(1, "EP01_01", 1, 3, 9, "", "happiness"),
                       (1, "EP01_02", 1, 3, 9, "", "contempt")])
  with pytest.raises(Casme2Error, match=r"row 3.*'contempt'.*happiness, disgust"):
    casme2.load_casme2(tmp_path)


def test_missing_column_is_named(tmp_path):
  header = ["Subject", "Filename", "OnsetFrame", "Apex", "Action Units", "Estimated Emotion"]
  sheet = make_tree(tmp_path, [], header=header)
  with pytest.raises(Casme2Error, match=r"no column for offset.*columns found"):
    casme2.read_coding_sheet(sheet)


@pytest.mark.parametrize("row, message", [
    ((1, "EP01_01", 20, 15, 10, "", "others"), "after OffsetFrame"),
    ((1, "EP01_01", 10, 25, 20, "", "others"), "outside onset..offset"),
    ((1, "EP01_01", "ten", 15, 20, "", "others"), "not a frame number"),
])
def test_inconsistent_frames_name_the_row(tmp_path, row, message):
  sheet = tmp_path / "CASME2-coding-1.csv"
  with open(sheet, "w", newline="") as f:
    csv.writer(f).writerows([HEADER_2014, row])
  with pytest.raises(Casme2Error, match=f"row 2.*{message}"):
    casme2.read_coding_sheet(sheet)


def test_missing_dataset_prints_instructions(tmp_path):
  with pytest.raises(Casme2Error, match="licensed") as e:
    casme2.load_casme2(tmp_path / "nowhere")
  assert casme2.FRAMES_DIR in str(e.value)


def test_missing_video_folder_is_named(tmp_path):
  make_tree(tmp_path, [(1, "EP01_01", 1, 3, 9, "", "others")])
  sheet = next(tmp_path.glob("*.xlsx"))
  wb = openpyxl.load_workbook(sheet)
  wb.active.append([1, "EP09_09", 1, 2, 3, "", "others"])
  wb.save(sheet)
  with pytest.raises(Casme2Error, match=r"EP09_09.*not found"):
    casme2.load_casme2(tmp_path)


def test_cli_summary(tmp_path, capsys):
  make_tree(tmp_path, ROWS)
  assert casme2.main([str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "5 videos of 4 subjects" in out and "happiness 1" in out
  assert casme2.main([str(tmp_path / "none")]) == 2
