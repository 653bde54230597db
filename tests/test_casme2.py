"""The coding-sheet reader and CASME II's quirks."""
import csv
import pathlib
import subprocess
import sys

import openpyxl
import pytest

from mer_jax.data import casme2, summary
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


@pytest.mark.parametrize("subject", [3, 3.0, "3", "03", "sub03", " Sub03 "])
def test_subject_spellings(tmp_path, subject):
  sheet = tmp_path / "CASME2-coding-1.xlsx"
  _write_xlsx(sheet, [HEADER_2014, [subject, "EP01_01", 1, 2, 3, "", "others"]])
  assert casme2.read_coding_sheet(sheet)[0].subject == "sub03"


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
  assert summary.main([str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "5 videos of 4 subjects" in out and "happiness 1" in out
  with pytest.raises(Casme2Error, match="not found"):
    summary.main([str(tmp_path / "none")])


def _write_xlsx(path, table, title_rows=(), second_sheet=False):
  wb = openpyxl.Workbook()
  ws = wb.active
  if second_sheet:
    ws.title = "Readme"
    ws.append(["CASME II coding, see the paper"])
    ws = wb.create_sheet("Coding")
  for r in [*title_rows, *table]:
    ws.append(r)
  wb.save(path)


def test_header_variants_title_row_and_second_worksheet(tmp_path):
  make_tree(tmp_path, ROWS[:2])
  header = [" SUBJECT ", "File name", "Onset Frame", "Apex_Frame", "offset frame",
            "Action units", "estimated emotion"]
  sheet = tmp_path / "CASME2-coding-20140508.xlsx"
  _write_xlsx(sheet, [header] + [list(r) for r in ROWS[:2]],
              title_rows=[["CASME II coding"], []], second_sheet=True)
  index = casme2.load_casme2(tmp_path)
  assert [(v.onset, v.apex, v.offset) for v in index.videos] == [(46, 59, 86), (131, 139, 161)]
  notes = "\n".join(index.notes)
  assert "header found on row 3" in notes and "worksheet 'Coding'" in notes
  assert "'Onset Frame'" in notes


def test_pandas_export_of_the_2019_sheet(tmp_path):
  """pandas is an independent reader: its view of the xlsx must equal ours, and its
  CSV export (blank headers become 'Unnamed: 2', ints may become floats) must read the same."""
  import pandas as pd
  xlsx = make_tree(tmp_path, ROWS, header=HEADER_2019, name="CASME2-coding-20190701")
  ref = pd.read_excel(xlsx)
  assert "Unnamed: 2" in ref.columns
  ours = casme2.read_coding_sheet(xlsx)
  assert [r.filename for r in ours] == [f.strip() for f in ref["Filename"]]
  assert [r.onset for r in ours] == list(ref["OnsetFrame"])
  assert [r.offset for r in ours] == list(ref["OffsetFrame"])
  assert [r.apex if r.apex is not None else "/" for r in ours] == list(ref["ApexFrame"])
  assert [r.emotion for r in ours] == [e.strip().lower() for e in ref["Estimated Emotion"]]
  assert [r.subject for r in ours] == [f"sub{s:02d}" for s in ref["Subject"]]
  csv_path = tmp_path / "CASME2-coding-20190701-updated.csv"
  ref.astype({"OnsetFrame": float}).to_csv(csv_path, index=False)
  assert casme2.read_coding_sheet(csv_path) == ours
  notes = []
  casme2.read_coding_sheet(csv_path, notes)
  assert any("Unnamed: 2" in n for n in notes)


def test_semicolon_csv_in_a_legacy_code_page(tmp_path):
  # Excel in a decimal-comma locale exports ';'-separated CSV; blank rows come as ';;;'.
  sheet = tmp_path / "CASME2-coding-20140508.csv"
  lines = [";".join(HEADER_2014), "1;EP02_01f;46;59;86;12;Happiness ", ";;;;;;", ""]
  sheet.write_bytes("\n".join(lines).encode("cp1252"))
  notes = []
  rows = casme2.read_coding_sheet(sheet, notes)
  assert [(r.row, r.filename, r.onset, r.emotion) for r in rows] == [(2, "EP02_01f", 46,
                                                                      "happiness")]
  assert any("';'" in n for n in notes) and any("skipped 1 blank rows" in n for n in notes)
  # A byte that is not UTF-8 (cp1252 'e acute' in an AU note) falls back to latin-1.
  sheet.write_bytes(",".join(HEADER_2014).encode() + b"\n1,EP02_01f,46,59,86,12 caf\xe9,fear\n")
  notes = []
  assert casme2.read_coding_sheet(sheet, notes)[0].action_units == "12 caf\xe9"
  assert any("latin-1" in n for n in notes)


def test_find_sheet_order_and_choice_is_noted(tmp_path):
  make_tree(tmp_path, ROWS[:1], name="CASME2-coding-20140508")
  make_tree(tmp_path, ROWS[:1], name="CASME2-coding-20190701", fmt="csv")
  (tmp_path / "~$CASME2-coding-20990101.xlsx").write_bytes(b"")  # Excel's lock file
  assert casme2.find_sheet(tmp_path).name == "CASME2-coding-20190701.csv"  # newest date first
  make_tree(tmp_path, ROWS[:1], name="casme2-coding-20190701-updated")
  assert casme2.find_sheet(tmp_path).name == "casme2-coding-20190701-updated.xlsx"
  index = casme2.load_casme2(tmp_path)
  assert index.sheet.name == "casme2-coding-20190701-updated.xlsx"
  assert any("several coding sheets" in n and "20140508" in n for n in index.notes)
  (tmp_path / "x").mkdir()
  with pytest.raises(Casme2Error, match="(?s)No coding sheet.*licensed"):
    casme2.find_sheet(tmp_path / "x")


def test_folder_quirks_sub1_missing_f_and_nested_zip(tmp_path):
  rows = [(1, "EP02_01", 5, 8, 12, "", "others"), (7, "EP01_01f", 5, 5, 12, "", "fear")]
  make_tree(tmp_path, rows, folders={0: "EP02_01f"}, first_frame=6)
  frames = tmp_path / casme2.FRAMES_DIR
  (frames / "sub07").rename(frames / "sub7")
  index = casme2.load_casme2(tmp_path)
  assert [v.video_id for v in index.videos] == ["sub01/EP02_01f", "sub7/EP01_01f"]
  notes = "\n".join(index.notes)
  assert "'EP02_01' matched folder 'EP02_01f'" in notes
  assert "key frames [5] have no image file" in notes  # onset 5, folder starts at 6
  assert "2 videos: frame numbers start above 1" in notes
  # Unzipped one level too deep: followed; pointed at the subject folders: told the parent.
  nested = tmp_path / "deep"
  (nested / casme2.FRAMES_DIR).mkdir(parents=True)
  frames.rename(nested / casme2.FRAMES_DIR / casme2.FRAMES_DIR)
  next(tmp_path.glob("*.xlsx")).rename(nested / "CASME2-coding-20140508.xlsx")
  assert len(casme2.load_casme2(nested).videos) == 2
  with pytest.raises(Casme2Error, match="pass its parent"):
    casme2.load_casme2(nested / casme2.FRAMES_DIR / casme2.FRAMES_DIR)


def test_duplicate_rows_and_empty_filename_are_errors(tmp_path):
  make_tree(tmp_path, [ROWS[0], ROWS[0]])
  with pytest.raises(Casme2Error, match=r"row 3.*coded twice \(also row 2\)"):
    casme2.load_casme2(tmp_path)
  sheet = tmp_path / "CASME2-coding-1.csv"
  with open(sheet, "w", newline="") as f:
    csv.writer(f).writerows([HEADER_2014, (1, "  ", 1, 2, 3, "", "others")])
  with pytest.raises(Casme2Error, match="row 2: Filename is empty"):
    casme2.read_coding_sheet(sheet)


def test_cli_as_a_module(tmp_path):
  make_tree(tmp_path, ROWS)
  out = subprocess.run([sys.executable, "-m", "mer_jax.data.summary", str(tmp_path)],
                       capture_output=True, text=True, check=True).stdout
  assert "5 videos of 4 subjects" in out and "per emotion: happiness 1, disgust 1" in out
  assert "ApexFrame missing" in out
  bad = subprocess.run([sys.executable, "-m", "mer_jax.data.summary", str(tmp_path / "none")],
                       capture_output=True, text=True)
  assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
