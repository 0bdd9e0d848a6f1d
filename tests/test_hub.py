"""Models and data sets named by Hugging Face id, without network: found in the local cache, or one error line
that says what was tried (and nothing left behind in --out). No test reaches the network: the hub is offline
(HF_HUB_OFFLINE=1) and its caches are empty temporary folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diagnose import models, tasks
from diagnose.errors import DiagnoseError
from diagnose.tasks import rows

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 2 more. How many?", "answer": "3+2=<<3+2=5>>5 apples\n#### 5"},
    {"question": "What is 1,000 + 1?", "answer": "It is 1,001.\n#### 1,001"},
]
MATH_ROWS = [
    {"problem": "What is $1+1$?", "solution": "$1+1=\\boxed{2}$.", "answer": "2", "subject": "Algebra",
     "level": 1, "unique_id": "test/algebra/1.json"},
    {"problem": "Simplify $\\frac{2}{4}$.", "solution": "It is \\boxed{\\frac{1}{2}}.", "answer": "\\frac12",
     "subject": "Prealgebra", "level": 2, "unique_id": "test/prealgebra/7.json"},
]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An offline hub whose caches (models and data sets) are empty folders under tmp_path. The libraries read
    these variables at import, so their constants are patched too."""
    import datasets
    import huggingface_hub.constants as hub

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    rows.read_dataset.cache_clear()  # loaded once per process: start from nothing, leave nothing
    yield home
    rows.read_dataset.cache_clear()


def _one_line(message: str, *parts: str) -> None:
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


# ---------------------------------------------------------------------------------------------- data sets


@pytest.mark.parametrize(
    "task, name, columns",
    [("gsm8k", "data set openai/gsm8k (config main, split test)", "question, answer"),
     ("math", "data set HuggingFaceH4/MATH-500 (split test)", "problem, solution, answer")],
)
def test_a_data_set_neither_on_the_hub_nor_cached_is_one_error_line(offline, task, name, columns):
    with pytest.raises(DiagnoseError) as err:
        tasks.get(task)
    message = str(err.value)
    _one_line(message, name, "HF_HUB_OFFLINE=1", str(offline / "datasets"), "path=<file>", columns)
    assert message.startswith(f"{name} is not available")


def _cache_dataset(cache: Path, build: Path, name: str, config: str | None, split: str, data: list[dict]):
    """Put `data` in the datasets cache the way `load_dataset(name, config)` leaves it after a download (its
    prepared Arrow split and dataset_info.json under <namespace>___<name>/<config>/<version>/<hash>), so that
    an offline `load_dataset` finds it. Built locally with the Parquet builder: nothing is downloaded."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    build.mkdir(parents=True, exist_ok=True)
    source = build / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(data), source)
    namespace, _, short = name.rpartition("/")
    builder = Parquet(cache_dir=str(build / "cache"), dataset_name=short, config_name=config or "default",
                      data_files={split: str(source)})
    builder.download_and_prepare()
    target = cache / f"{namespace}___{short.lower()}" / (config or "default") / "0.0.0" / "local"
    shutil.copytree(builder.cache_dir, target)


def test_gsm8k_without_path_reads_the_data_set_from_the_local_cache(offline, tmp_path):
    _cache_dataset(offline / "datasets", tmp_path / "build", "openai/gsm8k", "main", "test", GSM8K_ROWS)
    task = tasks.get("gsm8k")
    qs = task.questions()
    assert [q.answer for q in qs] == ["5", "1,001"]
    assert qs[0].solution == "3+2=5 apples" and GSM8K_ROWS[0]["question"] in qs[0].prompt
    assert [q.id for q in qs] == ["gsm8k:row1", "gsm8k:row2"]
    assert qs[0].meta["source"] == "data set openai/gsm8k (config main, split test)"
    assert task.verify_many([(qs[1], "Answer: 1001"), (qs[0], "Answer: 6")]) == [True, False]


def test_data_set_rows_map_exactly_as_a_files_rows(offline, tmp_path, monkeypatch):
    """`datasets.load_dataset` is asked for the standard name, config and split, and its rows go through the
    tasks' own row mapping: the same questions as the same rows in a JSONL file (ids aside where the file's
    name is part of them), and the same one-line errors for a bad row."""
    import datasets

    calls = []

    def fake_load(name, config=None, split=None, **kwargs):
        calls.append((name, config, split))
        return datasets.Dataset.from_list({"openai/gsm8k": GSM8K_ROWS, "HuggingFaceH4/MATH-500": MATH_ROWS}[name])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    for task, data in (("gsm8k", GSM8K_ROWS), ("math", MATH_ROWS)):
        path = tmp_path / f"{task}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in data))
        from_hub, from_file = tasks.get(task).questions(), tasks.get(f"{task}:path={path}").questions()
        strip = [(q.prompt, q.answer, q.solution) for q in from_hub]
        assert strip == [(q.prompt, q.answer, q.solution) for q in from_file]
        if task == "math":
            assert from_hub == from_file  # ids from unique_id, meta from level/subject
            assert [q.answer for q in from_hub] == ["2", "\\frac12"] and from_hub[1].meta["level"] == 2
    assert calls == [("openai/gsm8k", "main", "test"), ("HuggingFaceH4/MATH-500", None, "test")]
    assert rows.dataset_rows(datasets.Dataset.from_list(GSM8K_ROWS))[1].data == GSM8K_ROWS[1]

    rows.read_dataset.cache_clear()
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(
        [GSM8K_ROWS[0], {"question": "q", "answer": "no final line"}]))
    with pytest.raises(DiagnoseError) as err:
        tasks.get("gsm8k").questions()
    _one_line(str(err.value), "openai/gsm8k", "row 2", "####")


def test_an_explicit_path_never_touches_the_hub(offline, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset called"))
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps(GSM8K_ROWS[0]) + "\n")
    assert tasks.get(f"gsm8k:path={path}").questions()[0].answer == "5"
    with pytest.raises(DiagnoseError, match="needs a data file"):
        tasks.get("file")


# ---------------------------------------------------------------------------------------------- models


def test_a_model_id_found_nowhere_is_one_error_line_saying_what_was_tried(offline):
    with pytest.raises(DiagnoseError) as err:
        models.locate_model("no-such-org/no-such-model")
    _one_line(str(err.value), "'no-such-org/no-such-model'", "local path", "HF_HUB_OFFLINE=1",
              str(offline / "hub"), "config.json", "HF_HOME")
    assert models.resolve_model("no-such-org/no-such-model") == "no-such-org/no-such-model"  # names only


def test_a_cached_model_without_weights_is_one_error_line(offline):
    """A copy in the HF cache passes the check; a copy without tokenizer or weights fails in the engine with one
    line too (transformers' OSError, not a traceback)."""
    snapshot = offline / "hub" / "models--some-org--partial" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    assert models.locate_model("some-org/partial") == "some-org/partial"
    from diagnose.engines.hf import HFEngine

    with pytest.raises(DiagnoseError) as err:
        HFEngine("some-org/partial", device="cpu")
    _one_line(str(err.value), "'some-org/partial' could not be loaded", "HF_HOME")


@pytest.mark.parametrize(
    "args, start",
    [(["--student", "no-such-org/no-such-model"], "error: model 'no-such-org/no-such-model' not found"),
     (["--task", "gsm8k"], "error: data set openai/gsm8k (config main, split test) is not available")],
)
def test_cli_run_with_nothing_to_load_prints_one_line_and_creates_nothing(tmp_path, args, start):
    out = tmp_path / "x"
    home = tmp_path / "hf"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE"}
    for name in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "diagnose", "run", *args, "-q", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), lines
    assert "Traceback" not in proc.stderr and "HF_HUB_OFFLINE=1" in lines[0] and str(home) in lines[0]
    assert proc.stdout == "" and not out.exists()
