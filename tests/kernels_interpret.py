"""Triton kernels vs the float64 oracle under TRITON_INTERPRET=1 (run by test_kernels.py in a subprocess).

The interpreter must be chosen before triton is first imported, hence a separate process. Exit status 0
and a last line "OK" when every case agrees; mismatches are printed.
"""

import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import warnings  # noqa: E402

import kernel_cases as kc  # noqa: E402
import torch  # noqa: E402
from diagnose.kernels import triton_backend  # noqa: E402

from diagnose import kernels as K  # noqa: E402
from diagnose import objectives as O  # noqa: E402

warnings.filterwarnings("ignore")  # numpy warns on the masked lanes' inf/nan, which are discarded


def check(name, args, objs):
    exact = kc.oracle(*args[:4], objs, *args[4:])
    ref32 = K.node_stats_reference(*args[:4], objs, *args[4:])
    got = K.node_stats(*args[:4], objs, *args[4:], backend="triton")
    bad = kc.compare(exact, ref32, got, kc.student_s_pp(args[0]))
    print(name, "mismatches:", len(bad), *bad[:5], sep="\n  " if bad else " ")
    return not bad


def main() -> int:
    torch.manual_seed(0)
    triton_backend.BLOCK = 256  # several blocks per row, the last one ragged
    ok = True
    objs = kc.objectives()
    for kind, dtype in (
        ("random", torch.float32),
        ("peaked", torch.bfloat16),
        ("neginf", torch.float32),
        ("equal", torch.bfloat16),
    ):
        ok &= check(f"{kind}/{dtype}", kc.make_case(kind, n=4, vocab=1000, dtype=dtype), objs)
    # teachers as separate tensors (one launch per teacher) with a strided student
    z, zt, ids, g, tok, adv = kc.make_case("random", n=3, vocab=700, n_cfg=2, seed=1)
    wide = torch.cat([z, torch.zeros(3, 5)], 1)[:, :700]
    ok &= check("list-of-teachers", (wide, [zt[0].clone(), zt[1].clone()], ids, g, tok, adv), objs[:8])
    # a real vocabulary size
    triton_backend.BLOCK = 4096
    few = [O.parse(s) for s in ("rkl", "fkl", "jsd", "rkl_sampled", "fkl_clipped", "fkl_topk:k=5")]
    ok &= check("V=151936", kc.make_case("random", n=1, vocab=151_936, n_cfg=2, dtype=torch.bfloat16), few)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
