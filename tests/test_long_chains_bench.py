"""benchmarks/long_chains.py at tiny settings: its main path runs, prints one JSON line with a value per limit
in every list, and its plan_error is the error of `diagnose plan`'s own point estimate (work.expected)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from diagnose.pipeline import RunConfig
from diagnose.pipeline.plan import expected_work

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "long_chains.py"
LISTS = ("limits", "continuation_tokens_per_node", "seconds_per_node", "efficiency", "plan_error",
         "rollout_tokens_mean", "nodes", "plan_continuation_tokens", "continuation_tokens", "continuations")


def _module():
    spec = importlib.util.spec_from_file_location("benchmarks_long_chains", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_error_is_the_plan_point_estimates_error():
    bench = _module()
    cfg = RunConfig(questions=2, rollouts=2, budget=12, top_k=2, continuations=1, teachers=["self:answer"],
                    max_new_tokens=64)
    work = expected_work(cfg, 37.0, lengths=[[37, 20], [64, 27]], candidates=2.5)
    cost = {"continuation_tokens": 300}
    assert bench.plan_error(work, cost) == pytest.approx(abs(work["expected"]["continuation_tokens"] - 300) / 300)
    lo, hi = work["continuation_tokens"]
    assert bench.range_error(work, cost) == pytest.approx(abs((lo + hi) / 2 - 300) / 300)


def test_main_path_at_tiny_settings(capsys, embedded_model_path, shared_data):
    bench = _module()
    argv = ["--task", f"gsm8k:path={shared_data / 'gsm8k' / 'test.jsonl'}", "--limits", "8,16",
            "--questions", "1", "--rollouts", "2", "--budget", "10", "--teacher", "self:answer", "--objective", "rkl"]
    summary = bench.main(argv)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(summary))
    for key in LISTS:
        assert len(summary[key]) == 2, key
    assert summary["limits"] == [8, 16]
    for key in ("continuation_tokens_per_node", "seconds_per_node", "efficiency", "plan_error", "rollout_tokens_mean"):
        assert all(math.isfinite(v) and v >= 0 for v in summary[key]), (key, summary[key])
    assert all(n >= 1 for n in summary["nodes"])
    assert all(0 < m <= limit for m, limit in zip(summary["rollout_tokens_mean"], summary["limits"], strict=True))
    # plan_error is the error of the plan's point estimate; its calibration sampled the run's own rollouts
    for i in range(len(summary["limits"])):
        measured = summary["continuation_tokens"][i]
        expect = abs(summary["plan_expected_continuation_tokens"][i] - measured) / measured
        assert summary["plan_error"][i] == pytest.approx(expect, abs=2e-3)
        assert summary["plan_saw_run_rollouts"][i]
        assert summary["continuations"][i] <= summary["continuation_budget"][i]  # the budget bounds the total
    assert set(summary["goals"]) == {"cost_per_node_at_most_linear", "budget_bounds_total",
                                     "efficiency_ge_0.6_at_longest", "plan_error_le_0.25"}
