"""benchmarks/gpu_check.py at CPU size, so that the GPU check cannot rot.

The fast cases run the model-speed part (`--tiny`: poolformer_s12 at 32 px,
batch 2, Flax and timm workers) and check the table's rows, columns and
values; the slow one runs the speed part in bfloat16 (float32 is the same code
with autocast off) and the 2-epoch `mer_jax.train` run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
  spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod   # dataclasses look their module up there
  spec.loader.exec_module(mod)
  return mod


gpu_check = _module()


def run_check(tmp_path, *args, timeout=600):
  out_md = tmp_path / "check.md"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # The script sets its own compile flags (--tiny: fast compile in the model workers); its
  # training run trains as users do, not under the tests' e2e.FAST_COMPILE.
  env.pop("XLA_FLAGS", None)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out_md), *args],
                        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc, out_md


def parse_table(text: str) -> tuple[list[str], list[dict]]:
  """The last Markdown table of `text`: (header, rows as {column: cell})."""
  lines = text.rstrip().splitlines()
  end = len(lines)
  start = end
  while start > 0 and lines[start - 1].startswith("|"):
    start -= 1
  block = lines[start:end]
  cells = lambda l: [c.strip() for c in l.strip().strip("|").split("|")]  # noqa: E731
  header = cells(block[0])
  assert set(block[1]) <= set("|-: "), block[1]
  return header, [dict(zip(header, cells(l))) for l in block[2:]]


def number(cell: str) -> float:
  return float(cell.replace(",", "").replace("%", "").replace("~", "").strip())


def test_an_exhausted_budget_still_prints_every_row(tmp_path):
  proc, _ = run_check(tmp_path, "--skip_train", "--time_budget", "0", timeout=120)
  header, rows = parse_table(proc.stdout)
  assert header == list(gpu_check.COLUMNS)
  assert len(rows) == 4   # M1, M2 x float32, bfloat16
  assert {r["fwd img/s Flax"] for r in rows} == {"skipped"}
  assert {r["step img/s timm"] for r in rows} == {"skipped"}


def test_failed_cases_show_their_cause_in_their_cells():
  args = gpu_check.parse_args(["--tiny", "--methods", "M1,M2", "--dtypes", "float32"])
  cases = gpu_check.make_cases(args)
  ok = {"status": "ok", "fwd_img_s": 10.0, "step_img_s": 4.0, "step_s": 0.5,
        "fwd_flops": 2e9, "step_flops": 6e9, "step_bytes": 2 ** 30, "compile_s": 3.0}
  flax = {0: {"id": 0, **ok}, 1: {"id": 1, "status": "OOM", "error": "RESOURCE_EXHAUSTED"}}
  timm = {0: {"id": 0, **ok, "fwd_img_s": 5.0, "step_img_s": 8.0},
          1: {"id": 1, "status": "crash (exit -11)"}}
  train = {"model": "poolformer_s12", "input": "M2 MFS", "dtype": "float32", "status": "ok",
           "batch": 8, "img_s": 50.0, "input_wait": 0.125, "compile_s": 12.0}
  header, rows = parse_table(gpu_check.table(cases, flax, timm, train))
  first, second, last = rows
  assert first["fwd Flax/timm"] == "2.00" and first["step Flax/timm"] == "0.50"
  # Useful TFLOP/s: XLA's flops per step x steps per second (step_img_s / batch).
  assert number(first["step TFLOP/s Flax"]) == pytest.approx(6e9 * 4.0 / 2 / 1e12, rel=0.01)
  assert number(first["step TFLOP/s timm"]) == pytest.approx(6e9 * 8.0 / 2 / 1e12, rel=0.01)
  assert first["step GiB Flax"] == "1"
  assert second["fwd img/s Flax"] == second["step GiB Flax"] == "OOM"
  assert second["step img/s timm"] == "crash (exit -11)"
  assert second["fwd Flax/timm"] == "—"
  assert last["part"].startswith("mer_jax.train")
  assert (last["step img/s Flax"], last["compile s"], last["input wait"]) == \
      ("50.0", "12.0", "12.5 %")
  assert gpu_check._is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
  assert gpu_check._is_oom(Exception("RESOURCE_EXHAUSTED: Out of memory while trying"))
  assert not gpu_check._is_oom(ValueError("shape mismatch"))


def test_case_order_covers_every_model_first_at_the_papers_batch():
  args = gpu_check.parse_args(["--models", "vit_b32,swin_b", "--methods", "M1,M2"])
  cases = gpu_check.make_cases(args)
  assert len(cases) == 2 * 2 * 2 * 2
  first = cases[:4]
  assert {(c.model, c.method) for c in first} == {(m, k) for m in ("vit_b32", "swin_b")
                                                   for k in ("M1", "M2")}
  assert all(c.dtype == "float32" and c.batch == gpu_check.PAPER_BATCH[c.method] for c in first)
  assert (cases[0].size, cases[0].chans, cases[0].timm_name) == (384, 3, "vit_base_patch32_384")
  assert {c.batch for c in cases} == {8, 16, 64}


@pytest.mark.slow
def test_tiny_full_check_with_the_training_run(casme2_small, tmp_path):
  """Every part at CPU size (M2 in bfloat16; M1 and float32 are the same code
  at another shape and dtype); the training run (float32) reads the session's
  small synthetic CASME II (its M2 MFS config built here)."""
  from mer_jax.data import build
  manual, tfds_dir = casme2_small
  build.ensure_built("m2_mfs", str(manual), str(tfds_dir), log=lambda *a: None)
  proc, out_md = run_check(tmp_path, "--methods", "M2", "--dtypes", "bfloat16",
                           "--train_workdir", str(tmp_path / "train"),
                           "--train_data_dir", str(tfds_dir),
                           timeout=900)
  header, rows = parse_table(proc.stdout)
  assert header == list(gpu_check.COLUMNS)
  speed = [r for r in rows if r["part"] == "speed"]
  assert len(speed) == 1 and speed[0]["dtype"] == "bfloat16"
  for r in speed:
    assert (r["model"], r["batch"]) == ("poolformer_s12", "2")
    for col in ("fwd img/s Flax", "fwd img/s timm", "step img/s Flax", "step img/s timm",
                "fwd Flax/timm", "step Flax/timm", "fwd TFLOP/s Flax", "step TFLOP/s Flax",
                "step TFLOP/s timm", "step GiB Flax", "compile s"):
      assert number(r[col]) > 0, (col, r)
  assert {r["input"] for r in speed} == {"M2 32 gray"}
  train = rows[-1]
  assert train["part"].startswith("mer_jax.train")
  assert number(train["step img/s Flax"]) > 0
  assert number(train["compile s"]) > 0
  assert 0 <= number(train["input wait"]) <= 100
  # The file holds the same table; the JSON beside it the raw numbers.
  assert parse_table(out_md.read_text()) == (header, rows)
  raw = json.loads(out_md.with_suffix(".json").read_text())
  assert raw["train"]["status"] == "ok"
  # Epoch figures are the run's own first and second epochs.
  history = json.loads((tmp_path / "train" / "run" / "metrics.json").read_text())["history"]
  assert (raw["train"]["epoch1_s"], raw["train"]["epoch2_s"]) == \
      (history[0]["seconds"], history[1]["seconds"])
  assert raw["train"]["img_s"] == history[1]["images_per_s"]
  flax, timm = raw["flax"]["0"], raw["timm"]["0"]
  assert flax["status"] == timm["status"] == "ok"
  assert flax["fwd_flops"] > 0 and flax["step_flops"] > flax["fwd_flops"]
  assert raw["info"]["jax"] and raw["info"]["torch"] and raw["info"]["timm"]
