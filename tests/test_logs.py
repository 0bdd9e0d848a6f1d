"""Quiet by default: `diagnose run` keeps the libraries' log lines and progress bars off the terminal unless
given --verbose (diagnose.logs). Each check runs in a fresh interpreter, since what it sets is process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from diagnose import logs
from diagnose.pipeline import RunConfig

# Reads back what configure() set: the environment, the loggers' levels, the progress bars, the warning filters.
PROBE = """
import json, logging, sys, warnings
from diagnose import logs
logs.configure(sys.argv[1] == "verbose")
import os
import huggingface_hub.utils as hub
from transformers.utils import logging as tf
warnings.warn_explicit("old", FutureWarning, "x.py", 1, module="vllm.some_module")
warnings.warn_explicit("old", FutureWarning, "x.py", 1, module="diagnose.some_module")
print(json.dumps({
    "env": {name: os.environ.get(name) for name in logs.QUIET_ENV},
    "vllm": logging.getLogger("vllm").level,
    "transformers": tf.get_verbosity(),
    "hub": logging.getLogger("huggingface_hub").getEffectiveLevel(),
    "hub_bars": hub.are_progress_bars_disabled(),
    "tf_bars": tf.is_progress_bar_enabled(),
    "quiet": logs.is_quiet(),
}))
"""


def _probe(mode: str, **env) -> tuple[dict, str]:
    clean = {k: v for k, v in os.environ.items() if k not in logs.QUIET_ENV}
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300,
                          env={**clean, **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_quiet_sets_vllm_transformers_and_hub_to_errors_only():
    got, stderr = _probe("quiet")
    assert got["env"]["VLLM_LOGGING_LEVEL"] == "ERROR" and got["vllm"] == 40  # logging.ERROR
    assert got["env"]["TRANSFORMERS_VERBOSITY"] == "error" and got["transformers"] == 40
    assert got["env"]["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and got["hub_bars"] and not got["tf_bars"]
    assert got["hub"] == 40 and got["quiet"]
    # a library's FutureWarning is dropped; one raised from diagnose's own code is not
    assert "vllm.some_module" not in stderr and "x.py:1: FutureWarning: old" in stderr


def test_verbose_leaves_the_libraries_defaults():
    got, stderr = _probe("verbose")
    assert all(value is None for value in got["env"].values()), got["env"]
    assert got["vllm"] == 0 and got["transformers"] == 30 and not got["hub_bars"] and got["tf_bars"]
    assert not got["quiet"] and stderr.count("FutureWarning: old") == 2


def test_a_variable_the_user_set_wins():
    got, _ = _probe("quiet", VLLM_LOGGING_LEVEL="DEBUG", TRANSFORMERS_VERBOSITY="info")
    assert got["env"]["VLLM_LOGGING_LEVEL"] == "DEBUG" and got["vllm"] == 0  # left to vLLM
    assert got["transformers"] == 20 and got["env"]["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


@pytest.mark.slow
def test_cli_run_is_quiet_unless_verbose(tmp_path, embedded_model_path):
    """The tiny configuration of test_pipeline.py on the embedded model (one question): -q prints nothing of
    the libraries on stderr (transformers' "Loading weights" bar among them); --verbose lets them through."""
    from test_pipeline import TINY

    config = tmp_path / "run.toml"
    config.write_text(RunConfig(**{**TINY, "questions": 1}).to_toml())
    env = {k: v for k, v in os.environ.items() if k not in logs.QUIET_ENV}
    env["OMP_WAIT_POLICY"] = "PASSIVE"

    def run(out, *flags):
        return subprocess.run(
            [sys.executable, "-m", "diagnose", "run", "--config", str(config), "--out", str(out), "-q", *flags],
            capture_output=True, text=True, timeout=600, env=env,
        )

    quiet = run(tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert "Loading weights" not in quiet.stderr and "INFO" not in quiet.stderr, quiet.stderr
    verbose = run(tmp_path / "verbose", "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert "Loading weights" in verbose.stderr  # the libraries' own output is back
    assert "report:" in verbose.stdout


@pytest.mark.slow
def test_cli_run_on_vllm_is_quiet(tmp_path, embedded_model_path):
    """`--engine vllm -q`: none of vLLM's INFO lines (on stdout, where vLLM logs), its weight-loading bar or its
    shutdown warnings; the result still prints."""
    pytest.importorskip("vllm")
    from test_pipeline import TINY

    config = tmp_path / "run.toml"
    config.write_text(RunConfig(**{**TINY, "questions": 1, "engine": "vllm"}).to_toml())
    env = {k: v for k, v in os.environ.items() if k not in logs.QUIET_ENV}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    proc = subprocess.run(
        [sys.executable, "-m", "diagnose", "run", "--config", str(config), "--out", str(tmp_path / "x"), "-q"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    both = proc.stdout + proc.stderr
    for noise in (" INFO ", " WARNING ", "Loading safetensors", "force killing", "Loading weights", "FutureWarning"):
        assert noise not in both, (noise, both[-3000:])
    assert "report:" in proc.stdout
