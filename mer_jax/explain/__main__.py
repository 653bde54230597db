r"""Where a trained run looks: attribution maps of a split and their numbers.

  python -m mer_jax.explain --workdir RUN [--split test] [--method integrated_gradients,...]
      [--max_videos N]

Methods: integrated_gradients, smoothgrad, gradient (any model), attention_rollout
(ViT), grad_cam (Swin, PoolFormer); default: integrated gradients, SmoothGrad and
the model's own. Writes RUN/explain/explain.json (face mass beside its chance
level, region masses for eyes/brows, nose and mouth, the deletion curve against
random removal; per method, overall and per class), maps.npz and explain.png.
The face boxes and landmarks come from dlib on the run's CASME II frames
(detections cached), so the frames must be on this machine for the face and
region numbers.
"""
from __future__ import annotations

from mer_jax.plumbing import cli


def main(argv=None) -> int:
  p = cli.parser("mer_jax.explain", __doc__)
  p.add_argument("--workdir", required=True, help="a run directory of mer_jax.train")
  p.add_argument("--split", default="test", choices=("train", "validation", "test"))
  p.add_argument("--method", default="",
                 help="comma-separated methods (default: IG, SmoothGrad and the model's own)")
  p.add_argument("--max_videos", type=int, help="the split's first N videos (by id)")
  p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
  p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps")
  p.add_argument("--samples", type=int, default=16, help="SmoothGrad samples")
  p.add_argument("--noise", type=float, default=0.15,
                 help="SmoothGrad noise sd, a share of each image's value range")
  p.add_argument("--seed", type=int, default=0)
  args = cli.parse(p, argv)
  from mer_jax.explain.survey import explain_run
  explain_run(args.workdir, split=args.split,
              method_names=[m for m in args.method.split(",") if m] or None,
              max_videos=args.max_videos, checkpoint=args.checkpoint, steps_ig=args.steps,
              samples=args.samples, noise=args.noise, seed=args.seed)
  return 0


if __name__ == "__main__":
  cli.run(main)
