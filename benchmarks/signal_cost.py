"""What the no-signal check costs: the fused node statistics with the teachers plus 4 rounding twins (the
expectation over the top tokens' signs, estimate/signal.py) against the same call with the 2 random twins it
replaced (the named baseline, measured in the same run), on random logits of a Qwen3-sized vocabulary.

Also checks, on the device it runs on, that a teacher identical to the student at temperature 0.7 gives
|d|^2 = 0 for every objective once both sides are divided by the temperature.

Run: python benchmarks/signal_cost.py [--nodes 64] [--vocab 151936] [--teachers 3] [--device cuda]
The last line printed is JSON: {"device", "nodes", "vocab", "teachers", "baseline_s", "new_s", "ratio",
"identical_teacher_max_d_sq"}.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--teachers", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from diagnose import kernels, objectives
    from diagnose.estimate.directions import at_temperature
    from diagnose.estimate.signal import roundoff, twins

    dev = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    z = (3 * torch.randn(args.nodes, args.vocab, generator=gen)).to(dev) / 0.7
    teachers = [(z + torch.randn(z.shape, generator=gen).to(dev)) for _ in range(args.teachers)]
    cand = torch.stack([z[i].topk(5).indices for i in range(args.nodes)])
    zeros = torch.zeros(cand.shape, dtype=torch.float64, device=dev)
    tokens = cand[:, 0].clone()
    objs = [objectives.parse(o) for o in ("rkl", "fkl", "jsd:beta=0.5", "rkl_sampled", "rkl_topk")]
    u = roundoff("bfloat16")

    def old_twins():
        finite = torch.isfinite(z)
        eta = u * torch.where(finite, z.abs(), torch.zeros_like(z)).amax(-1, keepdim=True)
        g = torch.Generator().manual_seed(1)
        return [z + eta * (torch.randint(0, 2, z.shape, generator=g).to(dev, z.dtype) * 2 - 1) for _ in range(2)]

    def run(make):
        kernels.node_stats(z, teachers + make(), cand, zeros, objs, tokens=tokens, backend="chunked")

    baseline = _time(lambda: run(old_twins), args.repeats)
    new = _time(lambda: run(lambda: twins(z, u, seed=1)), args.repeats)
    raw = z * 0.7  # the engine's own logits; the student and an identical teacher both divided by T = 0.7
    st = kernels.node_stats(at_temperature(raw, 0.7), [at_temperature(raw.clone(), 0.7)], cand, zeros, objs,
                            tokens=tokens, backend="chunked")
    out = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "nodes": args.nodes,
        "vocab": args.vocab,
        "teachers": args.teachers,
        "baseline_s": round(baseline, 4),
        "new_s": round(new, 4),
        "ratio": round(new / baseline, 3),
        "identical_teacher_max_d_sq": float(st.d_sq.abs().max()),
    }
    print(f"node statistics with 4 sign-pattern twins vs 2 random twins: {out['ratio']:.2f}x "
          f"({new:.3f} s vs {baseline:.3f} s, {args.nodes} nodes x {args.vocab} vocabulary, {args.teachers} teachers)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
