"""predict (a new clip through the training pipeline), bench (speed table) and
tune (Optuna over train runs) on a tiny synthetic CASME II."""
from __future__ import annotations

import csv
import json
import os
import pathlib
import shlex
import subprocess
import sys

import jax
import numpy as np
import pytest
import timm

from e2e import train_overrides
from mer_jax import bench, predict, tune
from mer_jax.plumbing import cli
from mer_jax.run import experiment, steps
from mer_jax.data import casme2, labels, synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def data(casme2_small):
  return casme2_small


def exit_code(main, argv) -> int:
  """The exit code of a program's main run as from the command line."""
  with pytest.raises(SystemExit) as e:
    cli.run(main, argv)
  return e.value.code


@pytest.fixture
def run(reference_run):
  """The session's reference run (E2E_MODEL, M2 KFS, 32 px)."""
  return reference_run[0]


def _dataset_probs(run, video_id):
  """The run's frame probabilities on one video, from the built TFDS dataset."""
  config = experiment.load_run_config(run)
  setup = experiment.make_setup(config, log=lambda *a: None)
  state = experiment.restore_state(run, config, setup.model, setup.in_chans, setup.mesh).state
  for split, d in setup.data.items():
    rows = np.flatnonzero(d.video_ids == video_id)
    if len(rows):
      fn = jax.jit(steps.make_predict_step(setup.model, config.model.img_size))
      return d.frame_index[rows], np.asarray(fn(state["params"], d.images[rows]))
  raise AssertionError(video_id)


def test_predict_equals_the_pipeline_on_a_dataset_clip(run, data):
  manual, _ = data
  index = casme2.load_casme2(manual)
  v = next(v for v in index.videos if not v.apex_estimated and v.apex != v.onset)
  folder = next(iter(v.frames.values())).parent
  r = predict.predict_clip(run, folder, onset=v.onset, apex=v.apex, offset=v.offset)
  frames, probs = _dataset_probs(run, v.video_id)
  assert [f["frame"] for f in r["frames"]] == list(frames) == [v.onset, v.apex, v.offset]
  np.testing.assert_allclose([f["probs"] for f in r["frames"]], probs, atol=1e-5)
  assert [f["role"] for f in r["frames"]] == ["onset", "apex", "offset"]
  np.testing.assert_allclose(r["probs"], probs.mean(0), atol=1e-5)
  assert sum(r["probs"]) == pytest.approx(1.0, abs=1e-4)
  assert r["prediction"] in labels.EMOTIONS and r["notes"] == []
  text = predict.format_result(r)
  assert "prediction:" in text and "apex" in text


def test_predict_on_an_m3_run_equals_its_flow_dataset(data, m3_af_cell):
  """M3 (flow from the onset), on the session's M3 AF run: predict computes the
  onset -> apex flow image the TFDS build holds, and the run's probabilities on it."""
  w = m3_af_cell
  manual, _ = data
  v = next(v for v in casme2.load_casme2(manual).videos
           if not v.apex_estimated and v.onset < v.apex < v.offset)
  folder = next(iter(v.frames.values())).parent
  r = predict.predict_clip(w, folder, onset=v.onset, apex=v.apex, offset=v.offset)
  frames, probs = _dataset_probs(w, v.video_id)
  assert [f["frame"] for f in r["frames"]] == list(frames) == [v.apex]  # no onset
  np.testing.assert_allclose([f["probs"] for f in r["frames"]], probs, atol=1e-5)
  assert r["method"] == "m3" and any("optical flow from the onset frame" in n
                                     for n in r["notes"])


def test_predict_picks_key_frames_and_says_how(data):
  manual, _ = data
  index = casme2.load_casme2(manual)
  plan = {f"sub{p.subject.number:02d}/{p.episode}": p
          for p in synthetic.plan(videos=20, subjects=4, seed=5)}
  hits = []
  for v in [v for v in index.videos if not v.apex_estimated and v.apex > v.onset][:6]:
    p = plan[v.video_id]
    on, apex, off, notes = predict.key_frames(v.frames, "m2", onset=p.onset, offset=p.offset)
    assert (on, off) == (p.onset, p.offset) and len(notes) == 1
    assert "largest-motion" in notes[0] and f"frame {apex}" in notes[0]
    # The synthetic motion plateaus around the true apex: the pick shows most of it.
    hits.append(synthetic.intensity_at(p, apex) >= 0.8)
  assert sum(hits) >= 5, hits
  first, last = min(v.frames), max(v.frames)
  on, _, off, notes = predict.key_frames(v.frames, "m1")
  assert (on, off) == (first, last) and len(notes) == 3
  assert any("first frame" in n for n in notes) and any("last frame" in n for n in notes)


def test_predict_reads_a_video_file(run, data, tmp_path):
  av = pytest.importorskip("av")
  manual, _ = data
  v = casme2.load_casme2(manual).videos[5]
  path = tmp_path / "clip.mp4"
  with av.open(str(path), "w") as out:
    stream = out.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
    stream.options = {"crf": "10"}
    for n in sorted(v.frames):
      frame = av.VideoFrame.from_ndarray(np.asarray(casme2_frame(v, n)), format="rgb24")
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)
  frames = predict.frames_of_video(path, tmp_path)
  assert sorted(frames) == list(range(1, len(v.frames) + 1))
  r = predict.predict_clip(run, path)
  assert r["onset"] == 1 and r["offset"] == len(v.frames)
  assert len(r["notes"]) >= 3 and len(r["frames"]) == 3


def casme2_frame(v, n):
  from PIL import Image
  return Image.open(v.frames[n]).convert("RGB")


def test_predict_bad_input_says_what_to_do(run, tmp_path, capsys):
  assert exit_code(predict.main, ["--workdir", str(run), "--frames", str(tmp_path / "nope")]) == 2
  assert "does not exist" in capsys.readouterr().err
  (tmp_path / "empty").mkdir()
  assert exit_code(predict.main, ["--workdir", str(run), "--frames", str(tmp_path / "empty")]) == 2
  assert "no image files" in capsys.readouterr().err
  folder = tmp_path / "clip"
  folder.mkdir()
  from PIL import Image
  for n in (5, 6, 7):
    Image.new("RGB", (64, 48), (n, n, n)).save(folder / f"img{n}.jpg")
  assert exit_code(predict.main, ["--workdir", str(run), "--frames", str(folder), "--apex", "9"]) == 2
  assert "--apex 9 is not a frame of the clip (frames 5..7" in capsys.readouterr().err
  assert exit_code(predict.main, ["--workdir", str(tmp_path), "--frames", str(folder)]) == 2
  assert "config.json not found" in capsys.readouterr().err


def test_bench_rows_are_consistent(tmp_path, capsys):
  out = tmp_path / "bench.json"
  assert bench.main(["--models", "poolformer_s12", "--methods", "m1,m2", "--img_size", "32",
                     "--repeats", "3", "--batch", "4", "--json", str(out)]) == 0
  text = capsys.readouterr().out
  assert text.startswith("device: cpu") and "| poolformer_s12 | M2 | 32x32x1 |" in text
  rows = json.loads(out.read_text())["rows"]
  assert [(r["method"], r["in_chans"]) for r in rows] == [("m1", 3), ("m2", 1)]
  for r in rows:
    assert r["latency_ms"] > 0 and r["latency_p90_ms"] >= r["latency_ms"]
    assert r["images_per_s"] == pytest.approx(1e3 * r["batch"] / r["batch_ms"])
    ref = timm.create_model("poolformer_s12", num_classes=7, in_chans=r["in_chans"])
    assert r["params_m"] * 1e6 == sum(p.numel() for p in ref.parameters())
    assert r["gflops"] > 0
  # FLOPs scale with the number of pixels (the stem and blocks are per-token).
  big = bench.bench_model("poolformer_s12", "m2", batch=1, repeats=1, img_size=64)
  assert big["gflops"] / rows[1]["gflops"] == pytest.approx(4.0, rel=0.1)
  assert exit_code(bench.main, ["--models", "resnet50"]) == 2
  assert "poolformer_m36" in capsys.readouterr().err


def _tune(workdir, data, trials, capsys):
  """The tune command, with the reference run's --config overrides (2 epochs)
  and a fixed dropout (a range of one value, so no Optuna parameter)."""
  argv = ["--config", str(ROOT / "configs/quickstart.py"), "--workdir", str(workdir),
          "--trials", str(trials), "--lr", "1e-4,3e-3", "--dropout", "0.1,0.1",
          "--prune_startup_trials", "1", "--prune_warmup_epochs", "0"]
  assert tune.main(argv + train_overrides(data, num_epochs=2, bootstrap_resamples=50,
                                          checkpoint_every_steps=0)) == 0
  return capsys.readouterr().out


def test_tune_cli_rejects_bad_ranges():
  cmd = [sys.executable, "-m", "mer_jax.tune", "--config", str(ROOT / "configs/quickstart.py"),
         "--workdir", "/nonexistent/never_created", "--lr", "1e-3,1e-5"]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert out.returncode == 2 and "--lr: LOW 0.001 is above HIGH 1e-05" in out.stderr


def test_tune_checks_every_searched_loss_before_the_first_trial(tmp_path, capsys):
  """class_balanced with a class-weighted loss is two corrections: a search whose
  --losses hold one stops at once, though the config's own loss is plain CE."""
  argv = ["--config", str(ROOT / "configs/quickstart.py"), "--config.loss.name=ce",
          "--config.data.class_balanced=True", "--losses", "ce,focal",
          "--workdir", str(tmp_path / "t")]
  with pytest.raises(SystemExit) as e:
    cli.run(tune.main, argv)
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.startswith("error: data.class_balanced=True with "
                                              "loss.name=focal") and err.count("\n") == 1
  assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_tune_searches_resumes_and_reports_the_best(data, tmp_path, capsys):
  w = tmp_path / "tune"
  _tune(w, data, 1, capsys)
  first = {p.name: (p / "metrics.json").stat().st_mtime_ns for p in w.glob("trial_*")}
  out = _tune(w, data, 2, capsys)  # resumes: one more trial, the first untouched
  assert "1 of 2 trials finished" in out and "train with them:" in out
  assert first == {k: (w / k / "metrics.json").stat().st_mtime_ns for k in first}
  rows = list(csv.DictReader(open(w / "trials.csv")))
  assert len(rows) == 2 and {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
  assert sorted(p.name for p in w.glob("trial_*")) == ["trial_000", "trial_001"]
  for r in rows:
    assert 0.05 <= float(r["model.drop_path_rate"]) <= 0.3
    assert "model.drop_rate" not in r   # fixed by --dropout 0.1,0.1: no parameter
    assert 1e-4 <= float(r["optim.lr"]) <= 3e-3
    assert r["loss.name"] in ("focal", "weighted_ce")
    cfg = json.loads((pathlib.Path(r["workdir"]) / "config.json").read_text())
    assert cfg["optim"]["lr"] == pytest.approx(float(r["optim.lr"]))
    assert cfg["loss"]["name"] == r["loss.name"] and cfg["model"]["drop_rate"] == 0.1
  best = json.loads((w / "best.json").read_text())
  done = [r for r in rows if r["state"] == "COMPLETE"]
  # The score is the run's own validation macro-F1 (never the test split).
  for r in done:
    m = json.loads((pathlib.Path(r["workdir"]) / "metrics.json").read_text())
    assert float(r["value"]) == pytest.approx(m["validation"]["macro_f1"], abs=1e-6)
  # trials.csv keeps 6 decimals.
  assert best["validation_macro_f1"] == pytest.approx(max(float(r["value"]) for r in done),
                                                      abs=1e-6)
  # The command trains the best trial's config exactly: the search's own
  # overrides (num_epochs, data, ...), its fixed dropout and the trial's values.
  cmd = shlex.split(best["command"])
  assert cmd[:3] == ["python", "-m", "mer_jax.train"]
  p = cli.parser("mer_jax.train", None)
  cli.add_config(p)
  rebuilt = cli.parse(p, cmd[3:]).config
  trial = json.loads((pathlib.Path(best["workdir"]) / "config.json").read_text())
  assert json.loads(json.dumps(rebuilt.to_dict())) == trial
  assert trial["num_epochs"] == 2 and trial["model"]["drop_rate"] == 0.1
  assert best["overrides"] == [a for a in cmd if a.startswith("--config.")]
