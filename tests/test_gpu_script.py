"""benchmarks/gpu.py (what benchmarks/gpu.sh runs on a GPU machine), exercised here at tiny shapes on the CPU.

`--cpu-smoke` runs every section's code with small inputs: the student build (a 2-layer Qwen3 with the padded
tokenizer), the kernel benchmark, the accuracy check (chunked instead of Triton) and the hf pipeline. The vllm
section is left out (`--only`, so it is recorded as skipped, "not selected"): vLLM's CPU back end took 1.7-3
minutes to start and run it on this 2-core machine, more than this suite can spend. Its smoke run passes by
hand (`--cpu-smoke --timeout vllm=400`, docs/gpu.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # needs the embedded model's tokenizer (the repository's meaning of `slow`)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
SECTIONS = ("build", "kernels", "triton", "hf", "vllm")


def _start(out: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", CUDA_VISIBLE_DEVICES="")  # the CPU's run, anywhere
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    text, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, text
    report = json.loads(out.read_text())
    assert set(report["sections"]) == set(SECTIONS) and report["complete"], text
    return report


@pytest.fixture(scope="module")
def reports(embedded_model_path, tmp_path_factory):
    """The smoke run, and beside it a GPU-mode run (no CUDA here) whose kernels section exceeds its limit."""
    tmp = tmp_path_factory.mktemp("gpu")
    smoke, late = tmp / "smoke" / "gpu.json", tmp / "late" / "gpu.json"
    procs = [
        _start(smoke, "--cpu-smoke", "--only", "build,kernels,triton,hf"),
        _start(late, "--only", "kernels,triton", "--timeout", "kernels=0.5"),
    ]
    return _finish(procs[0], smoke), _finish(procs[1], late)


def test_every_section_runs_on_cpu(reports):
    report = reports[0]
    sections = report["sections"]
    for name in ("build", "kernels", "triton", "hf"):
        assert sections[name]["status"] == "ok", (name, sections[name])
        assert sections[name]["wall_s"] > 0
    assert sections["vllm"] == {"status": "skipped", "why": "not selected (--only)"}
    assert report["mode"] == "cpu-smoke" and report["device"] == "cpu"
    assert report["versions"]["torch"] and "transformers" in report["versions"]
    assert sum(report["timeouts_s"].values()) <= 460  # gpu.sh's set-up included, under 8 minutes
    build = sections["build"]
    assert build["tokenizer_size"] == 151_669 and build["vocab_size"] == 151_936 and build["tie_word_embeddings"]
    kernels = sections["kernels"]
    assert kernels["agree"] and kernels["naive"]["time_s"] > 0 and kernels["fused"]["time_s"] > 0
    triton = sections["triton"]
    assert triton["passed"] and triton["backend"] == "chunked" and len(triton["cases"]) == 5
    hf = sections["hf"]
    assert hf["questions"] == 1 and hf["rollout_tokens"] > 0 and 0 < hf["efficiency"]
    assert hf["overrides"]["teachers"] == ["self:answer"]


def test_full_shape_student_is_qwen3_1_7b(reports):
    """The GPU run's config builder (recorded by the smoke build, which builds no weights of that shape)."""
    full = reports[0]["sections"]["build"]["full_shape"]
    assert full["tokenizer_size"] == 151_669
    assert full == {
        "tokenizer_size": 151_669,
        "vocab_size": 151_936,
        "hidden_size": 2048,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 6144,
        "tie_word_embeddings": True,
    }


def test_a_section_over_its_limit_is_a_timeout_and_the_rest_still_runs(reports):
    report = reports[1]
    sections = report["sections"]
    assert report["mode"] == "gpu" and report["device"] == "cpu"
    assert sections["kernels"]["status"] == "timeout" and sections["kernels"]["timeout_s"] == 0.5
    assert sections["kernels"]["wall_s"] < 10  # killed, not waited for
    triton = sections["triton"]  # ran in its own process after the timeout, and found no GPU
    assert triton["status"] == "skipped" and triton["why"] == "no CUDA" and triton["wall_s"] > 0, triton
    for name in ("build", "hf", "vllm"):
        assert sections[name] == {"status": "skipped", "why": "not selected (--only)"}
