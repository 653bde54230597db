"""The command-line convention every program shares (mer_jax.plumbing.cli), the
workdir lock and the progress bar's count."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax.plumbing import cli, errors, progress
from mer_jax.run import workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.py")


def test_a_flag_and_config_overrides_of_every_type():
  p = cli.parser("mer_jax.x", "doc")
  p.add_argument("--img_size", type=int, default=3)
  cli.add_config(p)
  args = cli.parse(p, ["--img_size", "5", "--config", f"{ROOT}/configs/pool_m36_mfs.py:m2",
                       "--config.optim.lr=1e-4", "--config.data.synthetic", "true",
                       "--config.model.remat=block", "--config.init.weights=",
                       "--config.num_epochs=7"])
  c = args.config
  assert args.img_size == 5 and args.config_path.endswith("pool_m36_mfs.py:m2")
  assert c.data.method == "m2" and c.model.img_size == 224  # get_config("m2")
  assert c.optim.lr == 1e-4 and isinstance(c.optim.lr, float)
  assert c.data.synthetic is True and c.model.remat == "block" and c.init.weights == ""
  assert c.num_epochs == 7 and isinstance(c.num_epochs, int)


def test_override_flags_rebuild_the_config_they_describe():
  """cli.override_flags(base, config) read back by cli.parse gives config again
  (the command tune prints); a field equal to the base's is not written."""
  base = cli.load_config(QUICKSTART)
  config = cli.load_config(QUICKSTART, [
      "optim.lr=3.3e-4", "num_epochs=3", "aug.flip=false", "data.manual_dir=/a dir/x",
      "init.weights=timm/x", "model.drop_rate=0.125", "seed=0"])
  flags = cli.override_flags(base, config)
  assert len(flags) == 6 and not any(f.startswith("--config.seed=") for f in flags)
  p = cli.parser("mer_jax.x", None)
  cli.add_config(p)
  rebuilt = cli.parse(p, ["--config", QUICKSTART] + flags).config
  assert rebuilt.to_dict() == config.to_dict()
  assert cli.override_flags(base, base) == []


@pytest.mark.parametrize("override, message", [
    ("model.nam=x", "--config.model.nam: unknown config field; did you mean model.name?"),
    ("optim=1", "--config.optim is a group of fields; set one of them, e.g. --config.optim."),
    ("num_epochs=ten", "--config.num_epochs=ten: expected type int"),
    ("data.synthetic=maybe", "--config.data.synthetic=maybe: expected type bool"),
])
def test_bad_config_overrides_name_the_field(override, message):
  with pytest.raises(errors.UsageError) as e:
    cli.load_config(QUICKSTART, [override])
  assert str(e.value).startswith(message)


def test_run_prints_user_errors_as_one_line_and_exits_2(capsys):
  def main(argv):
    raise errors.NotFound("no such thing: do this instead")
  with pytest.raises(SystemExit) as e:
    cli.run(main, [])
  assert e.value.code == 2
  assert capsys.readouterr().err == "error: no such thing: do this instead\n"


@pytest.mark.parametrize("bug", [
    lambda: np.zeros(3).reshape(2, 2),                       # numpy's ValueError
    lambda: open("/nonexistent/mer_jax/file"),               # an unexpected missing file
    lambda: int("x"),
    lambda: {}["key"]])
def test_run_keeps_the_traceback_of_anything_but_a_user_error(bug, capsys):
  """A library's ValueError or FileNotFoundError is a bug to see, not a user error."""
  with pytest.raises((ValueError, FileNotFoundError, KeyError)):
    cli.run(lambda argv: bug(), [])
  assert "error:" not in capsys.readouterr().err


def test_the_projects_input_errors_are_user_errors(tmp_path, capsys):
  """Each kind of bad input, raised by the code that checks it, is one line."""
  from mer_jax.run import experiment, recipe, steps
  from mer_jax import tune
  from mer_jax.data import casme2, preprocess
  from mer_jax.models import weights
  c = recipe.get_config()
  c.model.name = "resnet50"
  bad_model_config = c
  cases = [
      lambda: steps.check_config(bad_model_config),                 # unknown model name
      lambda: preprocess.Method.parse("m9"),                       # unknown method
      lambda: cli.load_config(QUICKSTART, ["model.nam=x"]),         # unknown field
      lambda: cli.load_config(str(tmp_path / "none.py")),          # missing config file
      lambda: tune.search_space(lr=("1e-3", "1e-5")),              # bad flag value
      lambda: experiment.load_run_config(tmp_path),                # not a run directory
      lambda: casme2.load_casme2(tmp_path / "none"),               # missing CASME II
      lambda: weights.load_pretrained("poolformer_s12", str(tmp_path / "none.npz")),
  ]
  for case in cases:
    with pytest.raises(SystemExit) as e:
      cli.run(lambda argv: case(), [])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "Traceback" not in err


@pytest.mark.parametrize("module", [
    "mer_jax.train", "mer_jax.evaluate", "mer_jax.tune", "mer_jax.study", "mer_jax.bench",
    "mer_jax.predict", "mer_jax.convert", "mer_jax.export", "mer_jax.data.build",
    "mer_jax.data.summary", "mer_jax.data.synthetic"])
def test_every_program_has_help_that_exits_0(module, capsys):
  import importlib
  main = importlib.import_module(module).main
  with pytest.raises(SystemExit) as e:
    main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert f"python -m {module}" in out and "--" in out


_HOLDER = textwrap.dedent("""
    import sys, time
    from mer_jax.run import workdir
    with workdir.hold(sys.argv[1], log=lambda *a: None):
      print("HELD", flush=True)
      sys.stdin.readline()
""")


def test_a_held_workdir_is_refused_naming_its_holder(tmp_path):
  p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
  try:
    assert p.stdout.readline().strip() == "HELD"
    with pytest.raises(workdir.WorkdirBusy, match=f"PID {p.pid} on {socket.gethostname()}"):
      with workdir.hold(tmp_path):
        pass
  finally:
    p.communicate("\n", timeout=30)
  assert (tmp_path / "lock").read_text() == ""  # released and cleared
  said = []
  with workdir.hold(tmp_path, log=said.append):
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
  assert said == []  # a cleanly released lock is simply taken


def test_a_stale_lock_is_taken_over_and_said_so(tmp_path):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  (tmp_path / "lock").write_text(json.dumps(
      {"program": "mer_jax.train", "pid": int(dead), "host": socket.gethostname(),
       "since": "2026-01-01 00:00:00"}))
  said = []
  with workdir.hold(tmp_path, log=said.append):
    pass
  assert len(said) == 1 and f"mer_jax.train (PID {dead} on" in said[0]
  assert "no longer running" in said[0]


def test_a_fresh_lock_of_another_host_is_respected(tmp_path):
  (tmp_path / "lock").write_text(json.dumps(
      {"program": "mer_jax.train", "pid": 1, "host": "node-elsewhere", "since": "now"}))
  with pytest.raises(workdir.WorkdirBusy, match="node-elsewhere.*heartbeat"):
    with workdir.hold(tmp_path):
      pass
  old = os.path.getmtime(tmp_path / "lock") - 2 * workdir.STALE_S
  os.utime(tmp_path / "lock", (old, old))
  with workdir.hold(tmp_path, log=lambda *a: None):
    pass


def test_progress_counts_completed_steps_only():
  bar = progress.StepProgress(total=10, lag=2, enabled=False)
  outs = []
  for i in range(5):
    outs.append(jnp.full((256, 256), i) @ jnp.ones((256, 256)))
    bar.dispatched(outs[-1])
    # Every counted step is done; at most `lag` are dispatched and not counted.
    assert all(o.is_ready() for o in outs[:bar.completed])
    assert bar.completed == max(0, i + 1 - 2)
  bar.finish()
  assert bar.completed == 5 and all(o.is_ready() for o in outs)
