"""Model names: `embedded` resolves to the prepared checkpoint, other names pass through, and the
`models`/`ls engines` commands work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diagnose import models
from diagnose.cli import app
from diagnose.errors import DiagnoseError


def test_embedded_resolves_to_a_plain_checkpoint(embedded_model_path):
    path = Path(embedded_model_path)
    assert models.resolve_model("embedded") == embedded_model_path
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (path / "model.safetensors").is_file()
    assert "<|im_start|>" in (path / "chat_template.jinja").read_text()
    assert models.prepare() == path  # idempotent: already prepared


def test_unprepared_embedded_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DIAGNOSE_HOME", str(tmp_path))
    with pytest.raises(DiagnoseError, match="diagnose models prepare"):
        models.resolve_model("embedded")


def test_other_names_pass_through(tmp_path):
    assert models.resolve_model("Qwen/Qwen3-1.7B") == "Qwen/Qwen3-1.7B"
    assert models.resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    for missing in (str(tmp_path / "nope"), "./no/such/model", "~/no-such-model-dir"):
        with pytest.raises(DiagnoseError, match="does not exist"):
            models.resolve_model(missing)


def test_cli_models_and_engines(embedded_model_path):
    runner = CliRunner()
    out = runner.invoke(app, ["ls", "engines"])
    assert out.exit_code == 0 and {"hf", "vllm"} <= set(out.output.split())
    out = runner.invoke(app, ["models", "prepare"])
    assert out.exit_code == 0 and out.output.strip().endswith(embedded_model_path)
    out = runner.invoke(app, ["models", "path", "./no/such/dir"])
    assert out.exit_code == 1 and "does not exist" in out.output
