"""Fused alignment kernels vs the naive dense reference: time and peak memory.

    python benchmarks/kernels.py            # N = 2048 nodes, V = 151,936, six objectives, bf16 logits
    python benchmarks/kernels.py --small    # N = 256, V = 32,768 (quick)

Each path runs in its own subprocess, so peak memory is the process's peak resident set (ru_maxrss) on the
CPU, or torch.cuda.max_memory_allocated on a GPU; "extra" memory is that peak minus what was resident once
the inputs existed (memory_ratio compares extra memory, memory_ratio_total the whole peaks).
Last line: a JSON object {"cpu": {...}, "gpu": {...} or null}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SPECS = ("rkl", "fkl", "jsd", "rkl_sampled", "k3_loss", "rkl_topk:k=20")
# Peak memory bandwidth (bytes/s) by device name, for the achieved-bandwidth fraction.
PEAK_BW = {
    "H200": 4.8e12,
    "H100 SXM": 3.35e12,
    "H100 80GB HBM3": 3.35e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,
    "A100-SXM4-80GB": 2.04e12,
    "A100 80GB PCIe": 1.94e12,
    "A100": 1.56e12,
    "L40S": 0.864e12,
    "A10G": 0.6e12,
    "L4": 0.3e12,
}


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_inputs(n, vocab, n_cfg, k_cand, device, seed=0):
    """bf16 logits filled in row chunks (no full-size float32 temporary), candidates, g*, tokens."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    student = torch.empty(n, vocab, dtype=torch.bfloat16, device=device)
    teacher = torch.empty(n_cfg, n, vocab, dtype=torch.bfloat16, device=device)
    for r0 in range(0, n, 64):
        rows = min(64, n - r0)
        z = torch.randn(rows, vocab, generator=gen) * 2.5
        student[r0 : r0 + rows] = z.to(device, torch.bfloat16)
        for c in range(n_cfg):
            teacher[c, r0 : r0 + rows] = (z + torch.randn(rows, vocab, generator=gen) * 1.5).to(
                device, torch.bfloat16
            )
        del z
    top = torch.cat([student[r : r + 32].float().topk(4, dim=-1).indices for r in range(0, n, 32)])
    cand = torch.cat([top.cpu(), torch.randint(0, vocab, (n, k_cand - 4), generator=gen)], 1).to(device)
    g = (torch.randn(n, k_cand, generator=gen) * 0.1).to(device)
    tokens = top[:, 0].clone()
    return student, teacher, cand, g, tokens


def worker(path: str, n: int, vocab: int, n_cfg: int, device: str) -> dict:
    """One measurement in this process: build inputs, run `path` once (after a warm-up on GPU)."""
    import torch

    from diagnose import kernels, objectives

    objs = [objectives.parse(s) for s in SPECS]
    inputs = make_inputs(n, vocab, n_cfg, 16, device)
    fn = kernels.node_stats_reference if path == "naive" else kernels.node_stats
    kw = {} if path == "naive" else {"backend": "auto"}
    cuda = device == "cuda"
    if cuda:
        fn(
            *(x[:8] if x.dim() == 2 else x[:, :8] for x in inputs[:2]),
            inputs[2][:8],
            inputs[3][:8],
            objs,
            inputs[4][:8],
            **kw,
        )  # compile / warm up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_now_bytes()  # resident after the inputs exist (their build peaks a little higher)
    t0 = time.perf_counter()
    out = fn(inputs[0], inputs[1], inputs[2], inputs[3], objs, inputs[4], **kw)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_peak_bytes()
    return {
        "time_s": elapsed,
        "peak_bytes": peak,
        "extra_bytes": peak - base,
        "input_bytes": base,
        "cos_rkl_mean": float(out.cos_full[:, 0].mean()),
        "device": device,
        "threads": torch.get_num_threads(),
        "name": torch.cuda.get_device_name() if cuda else "cpu",
    }


def run(path, n, vocab, n_cfg, device) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        path,
        "--n",
        str(n),
        "--vocab",
        str(vocab),
        "--configs",
        str(n_cfg),
        "--device",
        device,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1]
            if proc.stderr.strip()
            else f"exit {proc.returncode}"
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(naive: dict, fused: dict) -> dict:
    out = {"naive": naive, "fused": fused}
    if "error" in naive or "error" in fused:
        return out
    out["speed_ratio"] = naive["time_s"] / fused["time_s"]
    out["memory_ratio"] = naive["extra_bytes"] / max(fused["extra_bytes"], 1)
    out["memory_ratio_total"] = naive["peak_bytes"] / fused["peak_bytes"]
    out["agree"] = abs(naive["cos_rkl_mean"] - fused["cos_rkl_mean"]) < 1e-3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="N = 256, V = 32768")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--configs", type=int, default=1, help="teacher configurations C")
    ap.add_argument("--device", default=None)
    ap.add_argument("--worker", choices=("naive", "fused"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    n = args.n or (256 if args.small else 2048)
    vocab = args.vocab or (32_768 if args.small else 151_936)
    if args.worker:
        print(json.dumps(worker(args.worker, n, vocab, args.configs, args.device or "cpu")))
        return
    import torch

    shape = {"n": n, "vocab": vocab, "configs": args.configs, "objectives": list(SPECS), "dtype": "bfloat16"}
    print(f"# {shape}", flush=True)
    result = {"shape": shape}
    cpu = compare(run("naive", n, vocab, args.configs, "cpu"), run("fused", n, vocab, args.configs, "cpu"))
    print(f"# cpu: {cpu}", flush=True)
    result["cpu"] = cpu
    result["gpu"] = None
    if torch.cuda.is_available():
        gpu = compare(
            run("naive", n, vocab, args.configs, "cuda"), run("fused", n, vocab, args.configs, "cuda")
        )
        if "speed_ratio" in gpu:
            name = gpu["fused"]["name"]
            peak_bw = next((bw for key, bw in PEAK_BW.items() if key in name), None)
            # the fused path reads every logit twice (normalisers, then sums) and the student's once more
            # for its top-k set (rkl_topk)
            gpu["bytes_read"] = 2 * (2 * (1 + args.configs) * n * vocab) + 2 * n * vocab
            gpu["achieved_bytes_per_s"] = gpu["bytes_read"] / gpu["fused"]["time_s"]
            gpu["peak_bytes_per_s"] = peak_bw
            gpu["bandwidth_fraction"] = gpu["achieved_bytes_per_s"] / peak_bw if peak_bw else None
        print(f"# gpu: {gpu}", flush=True)
        result["gpu"] = gpu
    print(json.dumps(result))


if __name__ == "__main__":
    main()
