r"""Re-evaluate a finished or interrupted run.

  python -m mer_jax.evaluate --workdir runs/pool_m36_mfs [--checkpoint latest]

Restores the best checkpoint (the latest if no best exists yet, or the newest
intact one with --checkpoint latest) and rewrites metrics.json,
predictions_*.csv, report.md and confusion_test.png in the workdir, with the
run's whole history and, as `evaluated_checkpoint`, which checkpoint it
tested (kind, step, any passed over as corrupt).
"""
from __future__ import annotations

import pathlib

from mer_jax.run import checkpointing
from mer_jax.plumbing import cli
from mer_jax.run import experiment
from mer_jax.run import report


def evaluate_workdir(workdir: str | pathlib.Path, *, checkpoint: str = "best",
                     say=print) -> dict:
  """Restores a run's best (else latest) checkpoint and rewrites its report."""
  workdir = pathlib.Path(workdir).absolute()
  config = experiment.load_run_config(workdir)
  setup = experiment.make_setup(config, log=lambda *a: None)
  restored = experiment.restore_state(workdir, config, setup.model, setup.in_chans,
                                      setup.mesh, checkpoint=checkpoint, say=say)
  # The history to date is in the newest checkpoint's meta, not the best's.
  ckpt = checkpointing.Checkpoints(workdir, config.checkpoint_keep)
  meta = ckpt.latest_meta() or restored.meta
  ckpt.close()
  if meta["epoch"] < restored.meta["epoch"]:   # the best outlived every readable latest
    meta = restored.meta
  predict_fn = experiment.jit_predict(setup)
  results = {s: experiment.evaluate_split(setup, restored.state["params"], s, predict_fn)
             for s in ("validation", "test")}
  say(f"Evaluating the {restored.kind} checkpoint (step {restored.step}, epoch "
      f"{restored.meta['epoch']})")
  return report.finish_run(workdir, config, results, meta, restored.record(), say=say,
                           dataset=setup.dataset, train_videos=setup.data["train"].num_videos)


def main(argv=None) -> int:
  p = cli.parser("mer_jax.evaluate", __doc__)
  p.add_argument("--workdir", required=True, help="the run directory of mer_jax.train")
  p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
  args = cli.parse(p, argv)
  evaluate_workdir(args.workdir, checkpoint=args.checkpoint)
  return 0


if __name__ == "__main__":
  cli.run(main)
