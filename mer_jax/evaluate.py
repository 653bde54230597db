r"""Re-evaluate a finished or interrupted run.

  python -m mer_jax.evaluate --workdir runs/pool_m36_mfs [--checkpoint latest]

Restores the best checkpoint (the latest if no best exists yet, or with
--checkpoint latest) and rewrites metrics.json, predictions_*.csv, report.md
and confusion_test.png in the workdir.
"""
from __future__ import annotations

import pathlib

from mer_jax import cli
from mer_jax import experiment
from mer_jax import report


def evaluate_workdir(workdir: str | pathlib.Path, *, checkpoint: str = "best") -> dict:
  """Restores a run's best (else latest) checkpoint and rewrites its report."""
  workdir = pathlib.Path(workdir).absolute()
  config = experiment.load_run_config(workdir)
  setup = experiment.make_setup(config, log=lambda *a: None)
  state, meta, which = experiment.restore_state(workdir, config, setup.model, setup.in_chans,
                                                setup.mesh, checkpoint=checkpoint)
  predict_fn = experiment.jit_predict(setup)
  results = {s: experiment.evaluate_split(setup, state["params"], s, predict_fn)
             for s in ("validation", "test")}
  print(f"Evaluating the {which} checkpoint (step {int(state['step'])}, epoch {meta['epoch']})")
  return report.finish_run(workdir, config, results, meta, dataset=setup.dataset)


def main(argv=None) -> int:
  p = cli.parser("mer_jax.evaluate", __doc__)
  p.add_argument("--workdir", required=True, help="the run directory of mer_jax.train")
  p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
  args = cli.parse(p, argv)
  evaluate_workdir(args.workdir, checkpoint=args.checkpoint)
  return 0


if __name__ == "__main__":
  cli.run(main)
