"""mer_jax.export: the StableHLO artifact and the ONNX copy equal the Flax model (random
weights, each family's tiny architecture), and an exported run reproduces the run's test
predictions, through mer_jax.predict without Flax."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from e2e import ROOT, subprocess_env
from mer_jax.run import artifact, experiment
from mer_jax import export, metrics
from mer_jax.data import casme2
from mer_jax.data.labels import EMOTIONS
from mer_jax.plumbing.errors import UserError
from parity import FAMILIES, TOL, family_module, images, rel_err
from tiny import TINY, TINY_SIZE


def tiny_model(family: str, in_chans: int = 1):
  name, _ = TINY[family]
  model = family_module(family).create(name, num_classes=7, img_size=TINY_SIZE, in_chans=in_chans)
  x = images(3, TINY_SIZE, in_chans, seed=1)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])["params"]
  return model, params, x


# PoolFormer in the fast set; ViT and Swin (compiles of about 5 s each here) in the full suite.
@pytest.mark.parametrize("family", [pytest.param(f, marks=() if f == "poolformer" else
                                                 pytest.mark.slow) for f in FAMILIES])
def test_exported_logits_equal_the_flax_models(family):
  """StableHLO within 1e-4 of the Flax logits at batch 3 and 1 (one symbolic batch);
  the ONNX file under onnxruntime within 1e-3."""
  model, params, x = tiny_model(family)
  fn = artifact.logits_fn(model, params)
  ref = np.asarray(jax.jit(lambda p, v: model.apply({"params": p}, v, train=False))(params, x))
  exported = jax.export.deserialize(bytearray(artifact.export_logits(fn, TINY_SIZE, 1)))
  assert exported.platforms == artifact.PLATFORMS
  for n in (3, 1):
    np.testing.assert_allclose(np.asarray(exported.call(x[:n])), ref[:n], atol=1e-4, rtol=0)
  ort = pytest.importorskip("onnxruntime")
  pytest.importorskip("jax2onnx")
  sess = ort.InferenceSession(artifact.onnx_model(fn, TINY_SIZE, 1),
                              providers=["CPUExecutionProvider"])
  assert [i.shape for i in sess.get_inputs()] == [["B", TINY_SIZE, TINY_SIZE, 1]]
  for n in (3, 1):
    got = sess.run(["logits"], {"images": x[:n]})[0]
    np.testing.assert_allclose(got, ref[:n], atol=1e-3, rtol=0)
    assert rel_err(got, ref[:n]) < TOL   # random-init logits are small: relative too


def test_a_fixed_batch_artifact_pads_its_last_chunk_and_is_checked_on_load(tmp_path):
  """A --batch 2 artifact read back through its contract: 3 images as 2 + 1 padded give
  the softmax of the Flax logits; a changed byte fails the sha256 check."""
  model, params, x = tiny_model("poolformer")
  fn = artifact.logits_fn(model, params)
  contract = {"method": "m2", "phase": "af", "labels": list(EMOTIONS),
              "input": {"batch": 2, "size": TINY_SIZE, "channels": 1,
                        "resize": {"method": "bilinear", "antialias": True}},
              "normalisation": {"divide_by": 1.0, "mean": [0.0], "std": [1.0]}}
  artifact.write(tmp_path, contract, artifact.export_logits(fn, TINY_SIZE, 1, batch=2), None)
  a = artifact.load(tmp_path / artifact.CONTRACT)
  assert a.exported.in_avals[0].shape == (2, TINY_SIZE, TINY_SIZE, 1)
  logits = np.asarray(jax.jit(fn)(x))
  np.testing.assert_allclose(a.probabilities(x), np.asarray(jax.nn.softmax(logits, -1)),
                             atol=1e-5)
  f = tmp_path / artifact.STABLEHLO
  f.write_bytes(f.read_bytes()[:-1] + b"x")
  with pytest.raises(UserError, match="sha256 differs"):
    artifact.load(tmp_path)


@pytest.fixture(scope="module")
def exported_run(reference_run, tmp_path_factory):
  """The reference run (E2E_MODEL, M2 KFS, 32 px) exported without ONNX."""
  out = tmp_path_factory.mktemp("export")
  contract = export.export_run(reference_run[0], out, onnx=False, say=lambda *a: None)
  return reference_run[0], out, contract


@pytest.mark.slow
def test_an_exported_run_reproduces_its_test_predictions_through_predict(exported_run,
                                                                         casme2_small, tmp_path):
  """The artifact with its contract's preprocessing gives the Flax run's test-frame
  probabilities and the run's own predictions_test.csv; one test clip through
  `mer_jax.predict --artifact` in a process where Flax and the model code cannot load."""
  run, out, contract = exported_run
  assert contract["checkpoint"]["step"] == contract["evaluated_checkpoint"]["step"]
  assert contract["input"]["size"] == 32 and contract["method"] == "m2"
  config = experiment.load_run_config(run)
  setup = experiment.make_setup(config, log=lambda *a: None)
  state = experiment.restore_state(run, config, setup.model, setup.in_chans, setup.mesh,
                                   say=lambda *a: None).state
  test = setup.data["test"]
  flax_probs = experiment.predict_split(setup, state["params"], "test",
                                        experiment.jit_predict(setup))
  probs = artifact.load(out).probabilities(test.images)
  np.testing.assert_allclose(probs, flax_probs, atol=1e-5)
  with open(run / "predictions_test.csv") as f:
    expected = {r["video_id"]: r["pred"] for r in csv.DictReader(f)}
  vids, preds = metrics.video_vote(probs, test.video_ids)
  assert {v: EMOTIONS[p] for v, p in zip(vids, preds)} == expected

  v = next(v for v in casme2.load_casme2(casme2_small[0]).videos if v.video_id in expected)
  folder = next(iter(v.frames.values())).parent
  result = tmp_path / "r.json"
  block = ("import sys; [sys.modules.__setitem__(m, None) for m in ('flax', 'flax.linen', "
           "'mer_jax.models', 'mer_jax.run.steps', 'mer_jax.run.experiment')]; "
           "from mer_jax import predict; from mer_jax.plumbing import cli; cli.run(predict.main)")
  cmd = [sys.executable, "-c", block, "--artifact", str(out), "--frames", str(folder),
         "--onset", str(v.onset), "--apex", str(v.apex), "--offset", str(v.offset),
         "--json", str(result)]
  done = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  r = json.loads(result.read_text())
  rows = np.flatnonzero(test.video_ids == v.video_id)
  assert [f["frame"] for f in r["frames"]] == list(test.frame_index[rows])
  np.testing.assert_allclose([f["probs"] for f in r["frames"]], flax_probs[rows], atol=1e-5)
  assert r["prediction"] == expected[v.video_id] and r["artifact"] == str(out)
  assert f"the export {out}" in done.stdout


def test_export_and_predict_flags_say_what_to_do(tmp_path, capsys):
  from mer_jax.plumbing import cli
  from mer_jax import predict

  def code(main, argv):
    with pytest.raises(SystemExit) as e:
      cli.run(main, argv)
    return e.value.code

  assert code(export.main, ["--workdir", str(tmp_path), "--batch", "0"]) == 2
  assert "--batch 0" in capsys.readouterr().err
  assert code(predict.main, ["--artifact", str(tmp_path), "--frames", str(tmp_path),
                             "--checkpoint", "latest"]) == 2
  assert "--checkpoint is for --workdir" in capsys.readouterr().err
  assert code(predict.main, ["--artifact", str(tmp_path), "--frames", str(tmp_path)]) == 2
  assert "contract.json not found" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.run(predict.main, ["--artifact", str(tmp_path), "--workdir", str(tmp_path),
                           "--frames", str(tmp_path)])
  assert "not allowed with argument" in capsys.readouterr().err
