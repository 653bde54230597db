"""Training end to end on a tiny synthetic CASME II: sharding, multi-process,
kill-and-resume, NaN handling, evaluation CLI, the paper's configs.

Runs go through the real command (`python -m mer_jax.train`) in
subprocesses, with a small PoolFormer at 32 px on KFS frames.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import shutil
import textwrap
import time

import numpy as np
import pytest

from e2e import ROOT, run_cmd, subprocess_env, train_cmd
from mer_jax.run import recipe
from mer_jax.data import casme2


def metrics(workdir):
  return json.loads((pathlib.Path(workdir) / "metrics.json").read_text())


@pytest.fixture
def data(casme2_small):
  return casme2_small


@pytest.fixture
def reference(reference_run):
  return reference_run


def run(cmd, devices=1, timeout=600):
  return run_cmd(cmd, devices, timeout)


def test_run_writes_the_promised_workdir(reference):
  w, out = reference
  for f in ("metrics.json", "predictions_test.csv", "report.md", "confusion_test.png",
            "config.json", "metrics.jsonl"):
    assert (w / f).exists(), f
  assert (w / "checkpoints" / "latest").is_dir() and (w / "checkpoints" / "best").is_dir()
  assert list((w / "tensorboard").glob("events.out.tfevents.*"))
  m = metrics(w)
  for split in ("validation", "test"):
    for k in ("macro_f1", "macro_f1_ci", "uar", "accuracy", "per_class_f1"):
      assert k in m[split]
  assert len(m["history"]) == 3 and 1 <= m["best_epoch"] <= 3
  [best] = [int(d.name) for d in (w / "checkpoints" / "best").iterdir() if d.name.isdigit()]
  assert m["evaluated_checkpoint"] == {"kind": "best", "step": best, "corrupt": []}
  best = max(h["val_macro_f1"] for h in m["history"])
  assert m["history"][m["best_epoch"] - 1]["val_macro_f1"] == best
  rows = (w / "predictions_test.csv").read_text().strip().splitlines()
  assert rows[0] == "video_id,subject,dataset,label,pred"
  assert len(rows) - 1 == m["test"]["num_videos"]
  assert all(r.split(",")[2] == "casme2" for r in rows[1:])   # a CASME II build names none
  assert m["train_videos"] == 20 - m["validation"]["num_videos"] - m["test"]["num_videos"]
  assert all(r.split(",")[1] == r.split("/")[0] for r in rows[1:])   # subNN/EP.. -> subNN
  assert "report:" in out.stdout and "macro-F1" in out.stdout


@pytest.mark.slow
def test_second_trainer_and_killed_run_in_one_workdir(reference, data, tmp_path):
  """A second trainer on a held workdir exits 2 naming the holder; the holder, killed mid-epoch, leaves a stale lock that the rerun
  takes over (and says so), resuming to the uninterrupted run's result."""
  ref_dir, _ = reference
  w = tmp_path / "killed"
  p = subprocess.Popen(train_cmd(w, data), env=subprocess_env(), cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  lock, latest = w / "lock", w / "checkpoints" / "latest"
  deadline = time.time() + 300
  while time.time() < deadline and p.poll() is None and not (
      lock.exists() and lock.read_text().strip()):
    time.sleep(0.1)
  assert p.poll() is None, "the first run ended before the second started"
  second = run(train_cmd(w, data))
  assert second.returncode == 2, second.stderr[-3000:]
  assert f"PID {p.pid}" in second.stderr and "in use by" in second.stderr
  assert "Traceback" not in second.stderr and "error: " in second.stderr
  # Kill once a mid-epoch checkpoint of the second epoch exists (checkpoints every 2 steps).
  while time.time() < deadline and p.poll() is None:
    steps = [int(d.name) for d in latest.glob("[0-9]*") if d.name.isdigit()] \
        if latest.exists() else []
    if steps and max(steps) >= 4:
      break
    time.sleep(0.2)
  assert p.poll() is None, "the run ended before it could be killed"
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert not (w / "metrics.json").exists()
  out = run(train_cmd(w, data))
  assert out.returncode == 0, out.stderr[-4000:]
  assert "Resuming from step" in out.stdout
  assert f"taking over the lock of mer_jax.train (PID {p.pid}" in out.stdout
  a, b = metrics(ref_dir), metrics(w)
  assert a["best_epoch"] == b["best_epoch"]
  for split in ("validation", "test"):
    assert a[split] == b[split]
  np.testing.assert_array_equal([h["train_loss"] for h in a["history"]],
                                [h["train_loss"] for h in b["history"]])
  assert lock.read_text() == ""  # a finished run leaves its workdir free


@pytest.mark.slow
def test_two_process_run_trains_to_the_same_result(reference, data, tmp_path):
  ref_dir, _ = reference
  w = tmp_path / "two"
  cmd = [sys.executable, str(ROOT / "launch" / "local.py"), "--processes", "2", "--"] + \
      train_cmd(w, data)
  out = run(cmd, timeout=900)
  assert out.returncode == 0, out.stdout[-4000:]
  a, b = metrics(ref_dir), metrics(w)
  # Same global batches; only the order of the gradient all-reduce differs.
  np.testing.assert_allclose([h["train_loss"] for h in a["history"]],
                             [h["train_loss"] for h in b["history"]], rtol=1e-4)
  assert a["best_epoch"] == b["best_epoch"]
  for split in ("validation", "test"):
    assert a[split]["macro_f1"] == pytest.approx(b[split]["macro_f1"])


_STEP_PROG = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, TESTS_DIR)
    import tiny
    tiny.register()
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, AxisType
    from mer_jax.run import input_pipeline, recipe, steps
    from mer_jax import models
    from mer_jax.plumbing import runtime
    c = recipe.get_config(tiny.E2E_MODEL, "m2", "mfs")
    c.model.drop_path_rate = 0.1
    c.optim.lr = 1e-3
    model = models.create_model(tiny.E2E_MODEL, img_size=32, in_chans=1, drop_path_rate=0.1)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))["params"]
    c.model.img_size = 32
    tx = steps.make_optimizer(c, 10)
    values = steps.run_values(c, np.array([5, 3, 2, 2, 1, 1, 6]))
    rng = np.random.RandomState(0)
    batch = {"image": rng.randint(0, 255, (8, 48, 48, 1)).astype(np.uint8),
             "label": rng.randint(0, 7, 8).astype(np.int32), "mask": np.ones(8, np.float32)}
    out = {}
    for n in (1, 4):
      mesh = Mesh(np.array(jax.devices()[:n]), ("data",), axis_types=(AxisType.Auto,))
      rep = runtime.replicated(mesh)
      state = jax.device_put({"step": jnp.zeros((), jnp.int32), "params": params,
                              "opt_state": tx.init(params)}, rep)
      step = jax.jit(steps.make_train_step(model, c, 10, is_flow=False),
                     out_shardings=(rep, rep))
      for _ in range(2):
        state, m = step(state, runtime.to_global(batch, mesh), values)
      leaves = jax.tree_util.tree_leaves(state["params"])
      out[n] = (float(m["loss"]), np.concatenate([np.ravel(l) for l in leaves]))
      print("sharding", n, state["params"]["stem"]["kernel"].sharding.is_fully_replicated)
    print("DEVICES", jax.device_count())
    print("LOSS", out[1][0], out[4][0])
    p0 = np.concatenate([np.ravel(l) for l in jax.tree_util.tree_leaves(params)])
    # Difference of the two runs relative to how far the params moved.
    print("MAXREL", np.linalg.norm(out[1][1] - out[4][1]) / np.linalg.norm(out[1][1] - p0))
""")


@pytest.mark.slow
def test_step_on_four_devices_equals_one_device(tmp_path):
  prog = tmp_path / "step.py"
  prog.write_text(_STEP_PROG.replace("TESTS_DIR", repr(str(pathlib.Path(__file__).parent))))
  out = run([sys.executable, str(prog)], devices=4, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  lines = dict(l.split(" ", 1) for l in out.stdout.splitlines() if " " in l)
  assert lines["DEVICES"] == "4"
  l1, l4 = map(float, lines["LOSS"].split())
  assert l1 == pytest.approx(l4, rel=1e-5)
  # Adam divides by sqrt(v): components with ~0 gradients amplify float
  # rounding of the reduction order, so compare the whole update, not each weight.
  assert float(lines["MAXREL"]) < 1e-3


def _steps(w):
  return sorted(int(d.name) for d in (w / "checkpoints" / "latest").iterdir() if d.name.isdigit())


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(reference, data, tmp_path):
  w = tmp_path / "nan"
  shutil.copytree(reference[0], w)  # 3 good epochs
  good = _steps(w)
  # A fourth epoch at a diverging lr: the saved config says so, or the resume would stop.
  cfg = json.loads((w / "config.json").read_text())
  cfg["num_epochs"], cfg["optim"]["lr"] = 4, 1e12
  (w / "config.json").write_text(json.dumps(cfg))
  out = run(train_cmd(w, data, num_epochs=4, checkpoint_every_steps=0, **{"optim.lr": 1e12}))
  assert out.returncode == 2
  assert "NaN or inf" in out.stderr and f"step {good[-1]}" in out.stderr
  assert _steps(w) == good


def test_run_logs_and_records_the_dataset_it_trained_on(reference, data):
  """metrics.json's `dataset` is the build's fingerprint: the source, the sheet's
  sha256 and the synthetic settings, checked against the files themselves."""
  w, out = reference
  ds = metrics(w)["dataset"]
  manual = data[0]
  sheet = casme2.find_sheet(manual)
  assert ds["source"] == os.path.realpath(manual)
  assert ds["sheet"] == {"name": sheet.name,
                         "sha256": hashlib.sha256(sheet.read_bytes()).hexdigest()}
  assert ds["synthetic"]["videos"] == 20 and ds["synthetic"]["seed"] == 5   # conftest's set
  saved = json.loads((pathlib.Path(ds["dir"]) / "fingerprint.json").read_text())
  assert {k: v for k, v in ds.items() if k != "dir"} == saved
  assert pathlib.Path(ds["dir"]).is_relative_to(data[1])
  logged = [line for line in out.stdout.splitlines() if line.startswith("dataset ")]
  assert len(logged) == 1 and ds["dir"] in logged[0] and sheet.name in logged[0]


def test_evaluate_cli_rewrites_the_report(reference, tmp_path):
  w = tmp_path / "run"
  shutil.copytree(reference[0], w)   # the session's run stays as it is
  before = metrics(w)
  (w / "report.md").unlink()
  out = run([sys.executable, str(ROOT / "tests" / "with_tiny.py"), "mer_jax.evaluate",
             "--workdir", str(w)])
  assert out.returncode == 0, out.stderr[-3000:]
  assert (w / "report.md").exists()
  after = metrics(w)
  assert after["test"] == before["test"] and after["best_epoch"] == before["best_epoch"]
  # The whole history, not the best checkpoint's share of it; which checkpoint it tested.
  assert after["history"] == before["history"] and after["epochs_run"] == 3
  best_step = int(next((w / "checkpoints" / "best").glob("[0-9]*")).name)
  assert after["evaluated_checkpoint"] == before["evaluated_checkpoint"] == {
      "kind": "best", "step": best_step, "corrupt": []}
  assert f"Evaluating the best checkpoint (step {best_step}," in out.stdout
  (tmp_path / "empty").mkdir()
  out = run([sys.executable, "-m", "mer_jax.evaluate", "--workdir", str(tmp_path / "empty")])
  assert out.returncode == 2 and "config.json" in out.stderr


def test_resume_with_another_config_stops_in_one_line(reference, data, tmp_path):
  w = tmp_path / "run"
  shutil.copytree(reference[0], w)
  steps = _steps(w)
  # The quickstart's cosine schedule decays over num_epochs: 4 is another run, as is the lr.
  out = run(train_cmd(w, data, num_epochs=4, log_every_steps=3, **{"optim.lr": 0.01}))
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
  [line] = out.stderr.strip().splitlines()
  assert line == (f"error: {w} holds a run of another config (num_epochs: 3 -> 4; optim.lr: "
                  "0.001 -> 0.01): rerun with --force to delete that run and train afresh, "
                  "or use another workdir")
  assert _steps(w) == steps and metrics(w) == metrics(reference[0])


@pytest.mark.slow
def test_corrupt_checkpoints_give_way_to_the_newest_intact_ones(reference, data, tmp_path):
  """Flipped bytes in the best and the newest latest checkpoint (orbax reads them back
  silently; the checksum does not match): the rerun resumes from the older latest one,
  trains to the uninterrupted run's losses, and tests the newest intact checkpoint,
  saying so on stdout and in metrics.json."""
  from test_run_faults import corrupt
  w = tmp_path / "run"
  shutil.copytree(reference[0], w)
  root = w / "checkpoints"
  newest, older = _steps(w)[-1], _steps(w)[-2]
  [best] = [d for d in (root / "best").iterdir() if d.name.isdigit()]
  corrupt(best)
  corrupt(root / "latest" / str(newest))
  out = run(train_cmd(w, data))
  assert out.returncode == 0, out.stderr[-4000:]
  assert "Traceback" not in out.stderr
  lines = out.stdout.splitlines()
  assert f"checkpoint {root / 'latest' / str(newest)} is corrupt (its state does not match " \
      f"the checksum saved with it); deleted: using {root / 'latest' / str(older)} (step " \
      f"{older}) instead" in lines
  assert f"Resuming from step {older} " in out.stdout
  assert any(l.startswith(f"checkpoint {best} is corrupt (") and l.endswith(
      f"using {root / 'latest' / str(newest)} (step {newest}) instead, the newest intact "
      "checkpoint, not the one selected on validation") for l in lines), out.stdout[-3000:]
  a, b = metrics(reference[0]), metrics(w)
  assert b["evaluated_checkpoint"] == {"kind": "latest", "step": newest, "corrupt": [str(best)]}
  np.testing.assert_array_equal([h["train_loss"] for h in a["history"]],
                                [h["train_loss"] for h in b["history"]])
  assert _steps(w)[-1] == newest   # saved anew


def test_bad_config_values_list_the_valid_ones(data, tmp_path):
  out = run(train_cmd(tmp_path / "x", data, **{"model.name": "resnet50"}))
  assert out.returncode == 2 and "poolformer_m36" in out.stderr
  out = run(train_cmd(tmp_path / "x", data, **{"data.phase": "xyz"}))
  assert out.returncode == 2 and "af, kfs, mfs" in out.stderr
  out = run(train_cmd(tmp_path / "x", data, **{"model.nam": "x"}))
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert "--config.model.nam: unknown config field; did you mean model.name?" in out.stderr


@pytest.mark.parametrize("field, value, valid", [
    ("model.dtype", "float16", "float32, bfloat16"),
    ("model.remat", "full", "'block', 'dots'"),
    ("loss.name", "mse", "focal"),
    ("data.protocol", "kfold", "paper, loso")])
def test_check_config_names_the_field_and_the_valid_values(field, value, valid):
  from mer_jax.run import steps
  c = recipe.get_config()
  section, key = field.split(".")
  c[section][key] = value
  with pytest.raises(ValueError, match=f"{field}.*{value}") as e:
    steps.check_config(c)
  assert valid in str(e.value)
  c[section][key] = recipe.get_config()[section][key]
  steps.check_config(c)


@pytest.mark.parametrize("method, overrides, message", [
    ("m3", {"aug.rotate_deg": 10.0}, "aug.rotate_deg=10.0 with data.method=m3"),
    ("m3", {"aug.brightness": 0.2, "aug.contrast": 0.1},
     "aug.brightness=0.2, aug.contrast=0.1 with data.method=m3"),
    ("m1", {"data.class_balanced": True, "loss.name": "weighted_ce"},
     "data.class_balanced=True with loss.name=weighted_ce"),
    ("m2", {"data.class_balanced": True, "loss.name": "focal"},
     "data.class_balanced=True with loss.name=focal")])
def test_contradicting_method_fields_stop_with_one_line(method, overrides, message, capsys,
                                                         tmp_path):
  from mer_jax.plumbing import cli, errors
  from mer_jax.run import steps
  from mer_jax import train
  c = recipe.get_config("pool_m36", method, "af")
  for field, value in overrides.items():
    section, key = field.split(".")
    c[section][key] = value
  with pytest.raises(errors.UsageError, match=message):
    steps.check_method_fields(c)
  # Through the train CLI: one `error:` line, exit 2, before any data or workdir.
  argv = ["--config", f"{ROOT / 'configs' / 'paper.py'}:model=pool_m36,method={method},phase=af",
          "--workdir", str(tmp_path / "w")] + [f"--config.{k}={v}" for k, v in overrides.items()]
  with pytest.raises(SystemExit) as e:
    cli.run(train.main, argv)
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(f"error: {message}")
  assert not (tmp_path / "w").exists()


def test_every_shipped_config_and_the_flow_augmentations_pass_the_method_checks():
  from mer_jax.plumbing import cli
  from mer_jax.run import steps
  for path in sorted((ROOT / "configs").glob("*.py")):
    steps.check_method_fields(cli.load_config(str(path)))
  c = recipe.get_config("pool_m36", "m3", "mfs")
  assert c.aug.flip and c.aug.scale_min < 1 and not (c.aug.rotate_deg or c.aug.brightness
                                                     or c.aug.contrast)
  c.data.class_balanced, c.loss.name = True, "ce"  # one correction: fine
  steps.check_method_fields(c)
  c.aug.enabled, c.aug.rotate_deg = False, 10.0  # unused when augmentation is off
  steps.check_method_fields(c)


def test_missing_dataset_and_manual_dir_print_the_instructions(tmp_path):
  out = run([sys.executable, "-m", "mer_jax.train", "--config",
             str(ROOT / "configs/pool_m36_mfs.py"), "--workdir", str(tmp_path / "w"),
             f"--config.data.manual_dir={tmp_path / 'none'}",
             f"--config.data.data_dir={tmp_path / 'tfds'}"])
  assert out.returncode == 2
  assert "CASME2_RAW_selected" in out.stderr and "casme.psych.ac.cn" in out.stderr


PAPER_PY = str(ROOT / "configs" / "paper.py")


def paper_py(arg: str):
  from mer_jax.plumbing import cli
  return cli.load_config(f"{PAPER_PY}:{arg}")


@pytest.mark.parametrize("model, name", [("vit_b32", "vit_b32"), ("swin_b", "swin_b"),
                                         ("pool_m36", "poolformer_m36"),
                                         ("pool_m48", "poolformer_m48")])
def test_paper_configs_have_the_paper_settings(model, name):
  """Every cell of the grid through configs/paper.py: the paper's settings, and field for
  field the recipe's get_config (by short and by registry name, keys in any order)."""
  loss = {"vit_b32": "focal", "pool_m36": "focal", "swin_b": "weighted_ce",
          "pool_m48": "weighted_ce"}[model]
  for method in ("m1", "m2", "m2a", "m3"):
    for phase in ("af", "kfs", "mfs"):
      c = paper_py(f"model={model},method={method},phase={phase}")
      assert c.model.name == name and c.data.method == method and c.data.phase == phase
      assert c.to_dict() == recipe.get_config(model, method, phase).to_dict()
      assert c.to_dict() == paper_py(f"phase={phase}, method={method}, model={name}").to_dict()
      if method not in ("m1", "m2"):
        continue
      assert c.optim.lr == 5e-5 and c.optim.weight_decay == 1e-3 and c.num_epochs == 50
      assert c.loss.name == loss and c.loss.gamma == 2.0
      assert 3 <= c.patience <= 5
      assert (16 <= c.batch_size <= 32) if method == "m1" else (4 <= c.batch_size <= 16)
      assert c.model.img_size == (384 if method == "m1" else 224)
      assert c.init.weights  # ImageNet init


def test_paper_py_defaults_and_pool_m36_mfs_are_the_same_cells():
  from mer_jax.plumbing import cli
  pool = str(ROOT / "configs" / "pool_m36_mfs.py")
  cell = paper_py("").to_dict()
  assert (cell["model"]["name"], cell["data"]["method"], cell["data"]["phase"]) == (
      "poolformer_m36", "m1", "mfs")
  assert cli.load_config(PAPER_PY).to_dict() == cell
  assert cli.load_config(pool).to_dict() == cell
  for method in ("m1", "m2", "m2a", "m3"):
    want = paper_py(f"model=pool_m36,method={method},phase=mfs").to_dict()
    assert cli.load_config(f"{pool}:{method}").to_dict() == want
    assert paper_py(f"method={method}").to_dict() == want
  assert paper_py("model=swin_b").to_dict() == paper_py(
      "model=swin_b,method=m1,phase=mfs").to_dict()


@pytest.mark.parametrize("arg, valid", [
    ("model=resnet50", "vit_b32, swin_b, pool_m36, pool_m48, poolformer_s12"),
    ("model=swin_b,method=m9", "m1, m2, m2a, m3"),
    ("phase=apex", "af, kfs, mfs"),
    ("size=384", "model, method, phase"),
    ("swin_b", "model, method, phase"),
    ("method=m1,method=m2", "method twice")])
def test_a_bad_paper_py_argument_is_one_line_naming_the_valid_ones(arg, valid, capsys,
                                                                   tmp_path):
  from mer_jax.plumbing import cli
  from mer_jax import train
  with pytest.raises(SystemExit) as e:
    cli.run(train.main, ["--config", f"{PAPER_PY}:{arg}", "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")
  assert valid in err and "Traceback" not in err
  assert not (tmp_path / "w").exists()
