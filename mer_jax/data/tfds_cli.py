r"""TFDS's own `build` command, without the rest of the `tfds` CLI.

  python -m mer_jax.data.tfds_cli build datasets/casme2 --config m2_mfs --manual_dir DIR

The TFDS-native alternative to `python -m mer_jax.data.build`, which is the
documented way to build CASME II (same datasets, with mer_jax's flags and its
Table I report); kept for those who drive datasets with TFDS's tools. Takes
exactly the flags of `tfds build`, and TFDS's conventions rather than
mer_jax.cli's (build options come from the environment, see
mer_jax.data.tfds_casme2). It exists because the `tfds` executable of TFDS
4.9.10 imports apache-beam at start-up (for its `convert_format` command) even
to build a dataset that never uses beam, and apache-beam pins older
protobuf/pillow than TensorFlow 2.21. Where apache-beam is installed,
`tfds build datasets/casme2 ...` does the same.
"""
from __future__ import annotations

import dataclasses
import sys

import simple_parsing
from absl import app

import tensorflow_datasets as tfds
from tensorflow_datasets.scripts.cli import build, cli_utils


@dataclasses.dataclass(frozen=True, kw_only=True)
class Args(cli_utils.Args):
  """Build a TFDS dataset (TFDS's `build` command)."""

  command: build.Args = simple_parsing.subparsers({"build": build.Args})

  def execute(self) -> None:
    self.command.execute()


def main(args: Args) -> None:
  tfds.core.visibility.set_availables([
      tfds.core.visibility.DatasetType.TFDS_PUBLIC,
      tfds.core.visibility.DatasetType.COMMUNITY_PUBLIC,
  ])
  args.execute()


def launch() -> None:
  app.run(main, flags_parser=cli_utils.make_flags_parser(Args, description=__doc__))


if __name__ == "__main__":
  sys.exit(launch())
