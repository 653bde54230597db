r"""What a user checks on a dataset copy before a long build: counts and quirks.

  python -m mer_jax.data.summary ~/casme2                       # CASME II
  python -m mer_jax.data.summary --dataset samm ~/SAMM
  python -m mer_jax.data.summary --dataset smic_hs ~/SMIC/HS --apex flow
  python -m mer_jax.data.summary --dataset casme3 ~/casme3/part_A

Prints the videos per native label and per subject (compare them with the
dataset's paper), how the apexes were chosen, the MEGC 2019 3-class counts
where the dataset has them, and every quirk the reader met and handled.
"""
from __future__ import annotations

import collections

from mer_jax.data import DATASETS, labels, load
from mer_jax.data.videos import VideoSet


def summary(index: VideoSet) -> str:
  """Counts per label and subject, apex rules, MEGC classes and notes of a copy."""
  vs = index.videos
  by_emotion = collections.Counter(v.emotion for v in vs)
  subjects = collections.Counter(v.subject for v in vs)
  source = f"sheet {index.sheet.name}" if index.sheet else "labels from folders"
  lines = [f"{len(vs)} videos of {len(subjects)} subjects ({index.dataset}, {source})",
           "per emotion: " + ", ".join(f"{e} {by_emotion[e]}"
                                       for e in labels.NATIVE[index.dataset]),
           "per subject: " + ", ".join(f"{s} {n}" for s, n in sorted(subjects.items()))]
  rules = collections.Counter(v.apex_rule for v in vs)
  lines.append("apex: " + ", ".join(f"{r} {rules[r]}" for r in sorted(rules)))
  megc = labels.scheme("megc3")
  if index.dataset in megc.datasets:
    three = collections.Counter(megc.class_of(v) for v in vs)
    lines.append("MEGC 2019 3-class: " + ", ".join(f"{c} {three[c]}" for c in megc.classes)
                 + f", dropped {three[None]}")
  if index.notes:
    lines += ["notes:"] + [f"  {n}" for n in index.notes]
  return "\n".join(lines)


def main(argv=None) -> int:
  from mer_jax.plumbing import cli  # here, not above: the library itself needs no CLI dependencies
  p = cli.parser("mer_jax.data.summary", __doc__)
  p.add_argument("root", help="the dataset's directory (as its loader documents)")
  p.add_argument("--dataset", choices=DATASETS, default="casme2")
  p.add_argument("--sheet", help="coding sheet to use (default: found in root; not smic_hs)")
  p.add_argument("--apex", choices=("middle", "flow"), default="middle",
                 help="smic_hs only: how the apex is chosen (it has none coded)")
  args = cli.parse(p, argv)
  options = {}
  if args.dataset == "smic_hs":
    options["apex"] = args.apex
  elif args.sheet:
    options["sheet"] = args.sheet
  print(summary(load(args.dataset, args.root, **options)))
  return 0


if __name__ == "__main__":
  from mer_jax.plumbing import cli
  cli.run(main)
