"""A run's config is what it says; checkpoint faults say what to do.

In process and in seconds: the comparison of a saved config with a requested
one, the workdir claim (and --force), the state checksum, corrupt checkpoints
passed over for the newest intact one, and a full disk during a save (faked:
orbax's error as it surfaces, not a filled disk). The end-to-end runs are in
test_train.py.
"""
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mer_jax.run import checkpointing
from mer_jax.plumbing import cli
from mer_jax.plumbing import errors
from mer_jax.run import recipe
from mer_jax.run import experiment


# --- config_changes and claim_workdir --------------------------------------------


def test_config_changes_names_each_differing_field():
  saved = {"seed": 0, "num_epochs": 10, "optim": {"lr": 1e-3, "schedule": "constant"},
           "data": {"manual_dir": "/a", "phase": "af"}, "log_every_steps": 10,
           "aug": {"scale_min": 0.85}}
  asked = {"seed": 0, "num_epochs": 20, "optim": {"lr": 1e-4, "schedule": "constant"},
           "data": {"manual_dir": "/b", "phase": "mfs", "split_seed": 3}, "log_every_steps": 5,
           "aug": {"scale_min": 0.85}}
  # Paths, cadence and (constant schedule) num_epochs cannot change what was trained.
  assert experiment.config_changes(saved, asked) == [
      "data.phase: 'af' -> 'mfs'", "data.split_seed: (absent) -> 3",
      "optim.lr: 0.001 -> 0.0001"]
  # The study's skip counts num_epochs: a finished cell of 10 epochs is not one of 20.
  assert "num_epochs: 10 -> 20" in experiment.config_changes(
      saved, asked, ignore=experiment.NEUTRAL_FIELDS)
  # The cosine schedule decays over num_epochs: another value is another run.
  for d in (saved, asked):
    d["optim"]["schedule"] = "cosine"
  assert "num_epochs: 10 -> 20" in experiment.config_changes(saved, asked)
  assert experiment.config_changes(saved, saved) == []


def _config(*overrides):
  c = recipe.get_config("poolformer_s12", "m2", "af")
  cli.apply_overrides(c, overrides)
  return c


def test_claim_workdir_stops_on_another_config_and_force_empties_it(tmp_path):
  w = tmp_path / "run"
  experiment.claim_workdir(w, _config())        # nothing there: free
  w.mkdir()
  (w / "config.json").write_text(json.dumps(_config().to_dict()))
  run_files = ["config.json", "metrics.json", "metrics.jsonl", "report.md",
               "predictions_test.csv", "checkpoints/latest/6/x", "tensorboard/events"]
  for f in run_files[1:]:
    (w / f).parent.mkdir(parents=True, exist_ok=True)
    (w / f).write_text("old")
  (w / "notes.txt").write_text("mine")          # not the run's: kept
  experiment.claim_workdir(w, _config("data.manual_dir=/elsewhere", "log_every_steps=1"))
  with pytest.raises(experiment.ConfigChanged) as e:
    experiment.claim_workdir(w, _config("optim.lr=0.01", "seed=3"))
  msg = str(e.value)
  assert "\n" not in msg and "optim.lr: 5e-05 -> 0.01; seed: 0 -> 3" in msg
  assert "--force" in msg and str(w) in msg
  assert isinstance(e.value, errors.UserError)    # one `error:` line from every program
  assert all((w / f).exists() for f in run_files)
  said = []
  experiment.claim_workdir(w, _config("seed=3"), force=True, say=said.append)
  assert not any((w / f).exists() for f in run_files) and not (w / "checkpoints").exists()
  assert (w / "notes.txt").read_text() == "mine" and "seed: 0 -> 3" in said[0]
  # Checkpoints without a config.json: which config trained them is unknown.
  (w / "checkpoints" / "latest" / "4").mkdir(parents=True)
  with pytest.raises(experiment.ConfigChanged, match="config.json is missing"):
    experiment.claim_workdir(w, _config())


def test_claim_workdir_refuses_fewer_epochs_than_trained(tmp_path):
  c = _config("num_epochs=5")
  (tmp_path / "config.json").write_text(json.dumps(c.to_dict()))
  ckpt = checkpointing.Checkpoints(tmp_path)
  ckpt.save(12, _state(1), {"epoch": 3})
  ckpt.wait()
  ckpt.close()
  experiment.claim_workdir(tmp_path, _config("num_epochs=8"))   # continues it
  experiment.claim_workdir(tmp_path, _config("num_epochs=3"))
  with pytest.raises(experiment.ConfigChanged, match="num_epochs: 2 is fewer than the 3"):
    experiment.claim_workdir(tmp_path, _config("num_epochs=2"))


# --- checksum and corrupt checkpoints ---------------------------------------------


def _state(seed):
  k = jax.random.PRNGKey(seed)
  params = {"w": jax.random.normal(k, (64, 96)), "b": jnp.arange(5, dtype=jnp.bfloat16)}
  tx = optax.adamw(1e-3)
  _, opt_state = tx.update(params, tx.init(params), params)
  return {"step": jnp.asarray(seed, jnp.int32), "params": params, "opt_state": opt_state}


def test_state_checksum_is_the_sum_of_the_words():
  s = _state(3)
  ref = 0
  for leaf in jax.tree.leaves(s):
    a = np.asarray(leaf)
    words = a.view(np.uint16) if a.dtype.itemsize == 2 else a.view(np.uint32)
    ref += int(words.astype(np.uint64).sum())
  assert checkpointing.state_checksum(s) == ref % 2**32
  flipped = jax.tree.map(lambda x: x, s)
  w = np.asarray(s["params"]["w"]).copy()
  w.view(np.uint32)[7, 11] ^= 1 << 3                 # one bit of one mantissa
  flipped["params"]["w"] = jnp.asarray(w)
  assert checkpointing.state_checksum(flipped) != checkpointing.state_checksum(s)


def _data_file(step_dir):
  """The largest file of a checkpoint's state: its array data (OCDBT)."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def corrupt(step_dir):
  """Flips 64 bytes in the middle of the checkpoint's array data: orbax
  stores incompressible floats without a checksum, so this reads back."""
  path = _data_file(step_dir)
  with open(path, "r+b") as f:
    f.seek(path.stat().st_size // 2)
    b = f.read(64)
    f.seek(path.stat().st_size // 2)
    f.write(bytes(x ^ 0xFF for x in b))


def _saved(tmp_path):
  """Checkpoints of steps 1 (best), 2, 3 (latest keeps 2 and 3)."""
  ckpt = checkpointing.Checkpoints(tmp_path, keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, _state(step), {"epoch": step}, best=step == 1)
  ckpt.wait()
  ckpt.close()
  return checkpointing.Checkpoints(tmp_path, keep=2)


def _same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_corrupt_checkpoint_gives_way_to_the_newest_intact_one(tmp_path):
  root = tmp_path / "checkpoints"
  ckpt = _saved(tmp_path)
  corrupt(root / "latest" / "3")
  said = []
  r = ckpt.restore_latest(_state(0), say=said.append)
  assert (r.kind, r.step, r.meta) == ("latest", 2, {"epoch": 2})
  _same(r.state, _state(2))
  assert r.corrupt == [str(root / "latest" / "3")]
  assert len(said) == 1 and f"{root / 'latest' / '3'} is corrupt" in said[0]
  assert f"using {root / 'latest' / '2'} (step 2) instead" in said[0]
  # The best: intact, then corrupt (no copy among the latest: the newest intact latest).
  assert ckpt.restore_best(_state(0), say=said.append).step == 1
  corrupt(root / "best" / "1")
  r = ckpt.restore_best(_state(0), say=said.append)
  assert (r.kind, r.step, r.corrupt) == ("latest", 2, [str(root / "best" / "1"),
                                                       str(root / "latest" / "3")])
  _same(r.state, _state(2))
  assert "not the one selected on validation" in said[-1]
  # A resumed run deletes what it passes over (it saves those steps again).
  corrupt(root / "latest" / "2")
  with pytest.raises(checkpointing.CheckpointError, match="every checkpoint under"):
    ckpt.restore_latest(_state(0), say=said.append)
  ckpt.close()


def test_a_best_saved_with_the_latest_is_a_copy_that_replaces_the_older_best(tmp_path):
  """A step saved as both is written once and copied into best/ once committed; the older
  best goes, and a later save does not rotate the copy's source away before it is made."""
  root = tmp_path / "checkpoints"
  ckpt = checkpointing.Checkpoints(tmp_path, keep=1)
  ckpt.save(1, _state(1), {"epoch": 1}, best=True)
  ckpt.save(2, _state(2), {"epoch": 2}, best=True)
  ckpt.save(3, _state(3), {"epoch": 3})      # keep=1: latest/2 goes once best/2 exists
  ckpt.wait()
  assert sorted(p.name for p in (root / "best").iterdir()) == ["2"]
  assert sorted(p.name for p in (root / "latest").iterdir()) == ["3"]
  r = ckpt.restore_best(_state(0))
  assert (r.kind, r.step, r.meta) == ("best", 2, {"epoch": 2})
  _same(r.state, _state(2))
  ckpt.close()


def test_a_compressed_checkpoint_of_an_earlier_version_reads_back(tmp_path):
  """Runs saved before checkpoints went uncompressed (zstd, via StandardSave) resume and
  evaluate: the reader takes the codec from each array's metadata."""
  import orbax.checkpoint as ocp
  path = tmp_path / "checkpoints" / "latest"
  old = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=True),
                              item_names=("state", "meta"))
  meta = {"epoch": 4, checkpointing.CHECKSUM: checkpointing.state_checksum(_state(4))}
  old.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(4)),
                                      meta=ocp.args.JsonSave(meta)))
  old.wait_until_finished()
  old.close()
  ckpt = checkpointing.Checkpoints(tmp_path)
  r = ckpt.restore_latest(_state(0))
  assert (r.kind, r.step, r.meta) == ("latest", 4, {"epoch": 4})
  _same(r.state, _state(4))
  ckpt.close()


def test_a_corrupt_best_uses_its_copy_among_the_latest(tmp_path):
  root = tmp_path / "checkpoints"
  ckpt = checkpointing.Checkpoints(tmp_path, keep=2)
  ckpt.save(1, _state(1), {"epoch": 1})
  ckpt.save(2, _state(2), {"epoch": 2}, best=True)
  ckpt.wait()
  corrupt(root / "best" / "2")
  said = []
  r = ckpt.restore_best(_state(0), say=said.append)
  assert (r.kind, r.step, r.corrupt) == ("best", 2, [str(root / "best" / "2")])
  _same(r.state, _state(2))
  assert f"using {root / 'latest' / '2'} (step 2) instead" in said[0]
  # Resuming deletes the corrupt newer checkpoints it passes over.
  ckpt.save(3, _state(3), {"epoch": 3})
  ckpt.wait()
  corrupt(root / "latest" / "3")
  r = ckpt.restore_latest(_state(0), say=said.append, discard=True)
  assert r.step == 2 and not (root / "latest" / "3").exists()
  ckpt.close()


def test_a_checkpoint_of_another_structure_is_a_bug_not_corruption(tmp_path):
  ckpt = _saved(tmp_path)
  other = _state(0)
  other["params"]["extra"] = jnp.zeros(3)
  with pytest.raises(Exception) as e:
    ckpt.restore_latest(other, say=lambda *a: None)
  assert not isinstance(e.value, checkpointing.CheckpointError)
  ckpt.close()


# --- disk full ---------------------------------------------------------------------


def _no_space(path):
  """orbax's error when TensorStore cannot write (as seen on a full tmpfs)."""
  return ValueError(
      f'RESOURCE_EXHAUSTED: Error writing "opt_state.0.mu.w/0.0" in OCDBT database at local '
      f'file "{path}.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": '
      f'Failed writing: "...": Failed to write 1007149 bytes to file 4: No space left on '
      f"device [os_error_code='28']")


def _raise(error):
  def f(*args, **kwargs):
    raise error
  return f


def test_disk_full_during_a_save_is_one_line_with_the_step_to_resume_from(tmp_path, monkeypatch):
  root = tmp_path / "checkpoints"
  ckpt = _saved(tmp_path)
  # The save of step 4 fails in the background; orbax raises it at the next save.
  real_save = ckpt.latest.save
  monkeypatch.setattr(ckpt.latest, "save", lambda step, **kw: None if step == 4 else (
      _raise(_no_space(root / "latest" / "4"))() if step == 5 else real_save(step, **kw)))
  ckpt.save(4, _state(4), {"epoch": 4})
  with pytest.raises(checkpointing.CheckpointError) as e:
    ckpt.save(5, _state(5), {"epoch": 5})
  msg = str(e.value)
  assert msg.startswith(f"no space left on device while saving a checkpoint to "
                        f"{root / 'latest' / '4'}: free space under ")
  assert msg.endswith("rerun the same command (it resumes from step 3, the last complete "
                      "checkpoint)")
  assert "\n" not in msg and isinstance(e.value, errors.UserError)
  # ... or at wait(), as an OSError of its own.
  monkeypatch.setattr(ckpt.best, "wait_until_finished",
                      _raise(OSError(28, "No space left on device")))
  with pytest.raises(checkpointing.CheckpointError, match="^no space left on device"):
    ckpt.wait()
  # Anything else, RESOURCE_EXHAUSTED of memory included, is not a full disk: as it was.
  monkeypatch.setattr(ckpt.best, "wait_until_finished", _raise(
      ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")))
  with pytest.raises(ValueError, match="Out of memory"):
    ckpt.wait()
  monkeypatch.undo()
  ckpt.close()


def test_orbax_tracebacks_of_a_full_disk_are_not_logged(tmp_path, caplog):
  checkpointing.Checkpoints(tmp_path).close()       # installs the filter
  orbax_file = os.path.join(os.path.dirname(checkpointing.ocp.__file__), "checkpoint_manager.py")
  absl = logging.getLogger("absl")

  def log(path, exc):
    absl.handle(logging.LogRecord("absl", logging.ERROR, path, 1, f"failed: {path}", None,
                                  (type(exc), exc, None)))
  full = _no_space("/w/checkpoints/latest/4")
  with caplog.at_level(logging.ERROR):
    log(orbax_file, full)
    log(orbax_file, ValueError("another failure"))
    log("/elsewhere/mine.py", full)
  assert [r.pathname for r in caplog.records] == [orbax_file, "/elsewhere/mine.py"]


# --- the study's skip of finished cells ------------------------------------------------


def test_study_skips_only_cells_finished_with_the_same_config(tmp_path, monkeypatch):
  from mer_jax import study
  from mer_jax.run import loop
  cell = study.Cell("poolformer_s12", "m2", "af", 0)
  w = cell.workdir(tmp_path)
  w.mkdir(parents=True)
  done = study.cell_config(cell, ["num_epochs=4"], "paper").to_dict()
  (w / "metrics.json").write_text(json.dumps({"config": done}))
  calls = []
  monkeypatch.setattr(loop, "train_and_evaluate", lambda c, d, force=False, finisher=None:
                      calls.append((c.to_dict(), d, force)))

  def ran(overrides, force=False):
    calls.clear()
    study.run_cells([cell], tmp_path, overrides, "paper", log=lambda *a: None, force=force)
    return calls
  assert ran(["num_epochs=4"]) == []
  assert ran(["num_epochs=4", "data.manual_dir=/elsewhere", "log_every_steps=1"]) == []
  # Another num_epochs or lr: train decides (continues it, or stops / --force retrains).
  assert [c[0]["num_epochs"] for c in ran(["num_epochs=6"])] == [6]
  assert ran(["num_epochs=4", "optim.lr=0.1"], force=True)[0][1:] == (str(w), True)
