r"""Train, early-stop, test and report: the system's main job.

  python -m mer_jax.train --config configs/pool_m36_mfs.py --workdir runs/pool_m36_mfs
  python -m mer_jax.train --config configs/paper.py:model=swin_b,method=m2,phase=af \
      --workdir runs/swin_b_m2_af

The loop itself is mer_jax.run.loop (config -> dataset -> mesh -> model ->
epochs -> validation -> checkpoints -> early stop -> test -> report). The same
command runs on one CPU, N GPUs or many hosts.

Rerunning the command on the same --workdir resumes from the newest intact
checkpoint (a corrupt one is passed over, and said so). The run must be of the
same config: paths, logging and checkpoint cadence may differ
(experiment.NEUTRAL_FIELDS), and num_epochs and the bootstrap may change
(experiment.RERUN_FIELDS; num_epochs only under the constant schedule, never
below the epochs already trained). Any other difference stops with one line
naming it; --force deletes the old run and trains afresh instead. metrics.json
says which checkpoint was tested (`evaluated_checkpoint`).
"""
from __future__ import annotations

import os

from mer_jax.plumbing import cli
from mer_jax.plumbing import runtime
from mer_jax.run.loop import train_and_evaluate


def main(argv=None) -> int:
  p = cli.parser("mer_jax.train", __doc__)
  cli.add_config(p)
  p.add_argument("--workdir", default=None,
                 help="run directory: checkpoints, logs, metrics and report; rerunning "
                      "with the same workdir resumes (default runs/MODEL_METHOD_PHASE)")
  p.add_argument("--force", action="store_true",
                 help="if the workdir holds a run of another config (which stops the "
                      "command otherwise), delete that run's checkpoints and results and "
                      "train afresh; a run of the same config resumes as without it")
  args = cli.parse(p, argv)
  runtime.maybe_initialize_distributed()
  config = args.config
  workdir = args.workdir or os.path.join(
      "runs", f"{config.model.name}_{config.data.method}_{config.data.phase}")
  train_and_evaluate(config, workdir, force=args.force)
  return 0


if __name__ == "__main__":
  cli.run(main)
