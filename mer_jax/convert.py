r"""Convert timm ImageNet weights into Flax parameters, once.

  python -m mer_jax.convert --model poolformer_m36 \
      --weights timm/poolformer_m36.sail_in1k --img_size 224 --in_chans 1

--weights takes a local model.safetensors / .npz / .pth, a folder holding one,
or a timm hub id (downloaded when online; offline, the message says which
file to fetch and where to pass it). The result goes to the converted-weights
cache that training reads (or to --out), so training starts without torch and
without converting again.
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np

from mer_jax.plumbing import cli
from mer_jax import models
from mer_jax.models import weights


def main(argv=None) -> int:
  p = cli.parser("mer_jax.convert", __doc__)
  p.add_argument("--model", required=True, choices=models.MODEL_NAMES)
  p.add_argument("--weights", required=True, help="file, folder or timm hub id")
  p.add_argument("--img_size", type=int, default=224)
  p.add_argument("--in_chans", type=int, default=3, help="1 for M2's grayscale input")
  p.add_argument("--num_classes", type=int, default=7)
  p.add_argument("--seed", type=int, default=0, help="seed of a re-initialised head")
  p.add_argument("--cache_dir", default="", help="default: ~/.cache/mer_jax/converted")
  p.add_argument("--out", default="", help="also write the params here (flax msgpack)")
  args = cli.parse(p, argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  variables = weights.load_pretrained(
      args.model, args.weights, img_size=args.img_size, in_chans=args.in_chans,
      num_classes=args.num_classes, seed=args.seed, cache_dir=args.cache_dir or None)
  n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables))
  print(f"{args.model}: {n / 1e6:.2f} M parameters converted from {args.weights} "
        f"(img_size {args.img_size}, in_chans {args.in_chans}, {args.num_classes} classes)")
  if args.out:
    import flax.serialization
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "wb") as f:
      f.write(flax.serialization.msgpack_serialize(variables))
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  cli.run(main)
