r"""K runs in one program vs one by one: the train step's time and runs per hour.

  python benchmarks/bench_multirun.py [--model vit_b32] [--method m2] [--batch 8]
      [--ks 1,2,4,8] [--run_steps 100] [--case_seconds 20] [--json out.json]

For each K, K seeds of the paper's recipe of MODEL at METHOD (configs as
mer_jax.run.recipe makes them: augmentation on, the paper's loss and AdamW;
random init) train in one program: the step of mer_jax.run.multirun (state
stacked on a run axis, vmapped) on random uint8 images, timed with
mer_jax.plumbing.timing.pipelined_seconds after a warm-up. "One by one" is
the plain step of a single run (steps.make_train_step, what loop.train_and_evaluate
jits). Runs per hour count training steps only (a run of --run_steps steps;
no evaluation, checkpoints or compilation): K * 3600 / (run_steps * step seconds).
benchmarks/gpu_check.py runs the same function on a GPU.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the GPU machine runs from a plain checkout, not installed
  sys.path.insert(0, str(ROOT))

from mer_jax.plumbing import timing

COLUMNS = ("program", "K", "step s", "runs/h", "speed-up", "compile s")


def measure(model: str, method: str, batch: int, ks, *, run_steps: int = 100,
            img_size: int = 0, warmup: int = 1, iters: int = 20, case_seconds: float = 20.0,
            log=print) -> list[dict]:
  """[{"K": 0 (one run, unvmapped) or K, "step_s", "runs_per_h", "compile_s"}]."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from mer_jax.data.labels import EMOTIONS
  from mer_jax.data.preprocess import Method
  from mer_jax.run import multirun, recipe, steps

  c = recipe.get_config(model, method, "af")
  c.batch_size, c.init.weights = batch, ""
  if img_size:
    c.model.img_size = img_size
  chans = Method.parse(method).image_shape[-1]
  size = c.model.img_size
  net = steps.build_model(c, chans)
  tx = steps.make_optimizer(c, run_steps)
  is_flow = Method.parse(method).is_flow
  rng = np.random.default_rng(0)
  n_cls = len(EMOTIONS)

  def batch_of(k):
    shape = (k, batch) if k else (batch,)
    return {"image": rng.integers(0, 256, (*shape, size, size, chans), dtype=np.uint8),
            "label": (np.arange(int(np.prod(shape))) % n_cls).reshape(shape).astype(np.int32),
            "mask": np.ones(shape, np.float32)}

  def state_of(seed):
    params = net.init(jax.random.PRNGKey(seed), *steps.dummy_inputs(c, chans))["params"]
    return steps.fresh_state(params, tx)

  out = []
  for k in [0, *ks]:
    t0 = time.perf_counter()
    if k == 0:
      fn = jax.jit(steps.make_train_step(net, c, run_steps, is_flow=is_flow),
                   donate_argnums=0)
      args = (jax.device_put(batch_of(0)), jax.device_put(steps.run_values(c, np.ones(n_cls))))
      state = [jax.jit(state_of)(0)]
    else:
      fn = jax.jit(multirun.make_multi_step(net, c, run_steps, is_flow=is_flow),
                   donate_argnums=0)
      values = multirun.stack([steps.run_values(c, np.ones(n_cls)) for _ in range(k)])
      values["seed"] = np.arange(k, dtype=np.int32)
      args = (jax.device_put(batch_of(k)), jax.device_put(values), jnp.ones((k,), bool))
      # Made stacked (vmapped init): no unstacked copies beside the K states.
      state = [jax.jit(jax.vmap(state_of))(jnp.arange(k))]
    compiled = fn.lower(state[0], *args).compile()
    compile_s = time.perf_counter() - t0

    def one():
      state[0], m = compiled(state[0], *args)
      return m["loss"]
    step_s = timing.pipelined_seconds(one, jax.block_until_ready, warmup=warmup, iters=iters,
                                      case_seconds=case_seconds)
    runs = max(k, 1)
    row = {"K": k, "step_s": step_s, "runs_per_h": runs * 3600 / (run_steps * step_s),
           "compile_s": compile_s}
    log(f"[multirun] {model} {method} batch {batch}: "
        f"{'one run' if k == 0 else f'K={k}'} {json.dumps(row)}")
    out.append(row)
    del state, compiled, fn
  return out


def table(rows: list[dict]) -> str:
  """The markdown table of `measure`'s rows; speed-up is over the one-by-one runs per hour."""
  base = next(r for r in rows if r["K"] == 0)["runs_per_h"]
  return timing.markdown_table(COLUMNS, [
      ["one by one" if r["K"] == 0 else "one program", str(max(r["K"], 1)),
       f"{r['step_s']:.3f}", f"{r['runs_per_h']:.1f}", f"{r['runs_per_h'] / base:.2f}",
       f"{r['compile_s']:.1f}"] for r in rows], right_from=1)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", default="vit_b32")
  ap.add_argument("--method", default="m2")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--img_size", type=int, default=0, help="0 = the method's")
  ap.add_argument("--ks", default="1,2,4,8")
  ap.add_argument("--run_steps", type=int, default=100)
  ap.add_argument("--iters", type=int, default=20)
  ap.add_argument("--case_seconds", type=float, default=20.0)
  ap.add_argument("--json", default="", help="also write the rows here")
  args = ap.parse_args(argv)
  rows = measure(args.model, args.method, args.batch, [int(k) for k in args.ks.split(",") if k],
                 run_steps=args.run_steps, img_size=args.img_size, iters=args.iters,
                 case_seconds=args.case_seconds, log=lambda m: print(m, file=sys.stderr,
                                                                       flush=True))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
