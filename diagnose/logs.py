"""What the libraries under diagnose print: quiet by default, their own defaults with `--verbose`.

Quiet (`configure(False)`; `diagnose run`, `plan` and `batch` do it unless given --verbose):

- vLLM: errors only. VLLM_LOGGING_LEVEL=ERROR is read by vLLM when it configures logging, in this process and
  in the engine and worker processes it starts (they inherit the environment); the "vllm" logger is set too,
  for a vLLM imported already. ERROR, not WARNING: on the CPU back end WARNING still lets through a dozen
  start-up hints (LD_PRELOAD, Triton, eager mode) and, for a float32 checkpoint loaded as bfloat16, one line
  per weight (about 150 for the embedded model), plus "[shutdown] force killing ..." lines at exit. (vLLM
  logs to stdout by default, where `diagnose run` prints its result.) The engine also loads weights without
  its progress bar (`is_quiet()`, see engines/vllm.py).
- transformers, huggingface_hub and datasets: errors only (no "Loading weights" bar, download chatter,
  retry warnings when the hub is unreachable, or "Using the latest cached version" lines); Hugging Face
  progress bars off.
- torch's C++ warnings (TORCH_CPP_LOG_LEVEL=ERROR; read when torch loads, so it reaches vLLM's processes);
  FutureWarning / DeprecationWarning raised from these libraries' code in this process, and any in the
  processes it starts (PYTHONWARNINGS; diagnose itself raises none).

Left through: warnings a library prints before it has configured its logging in a process it starts (vLLM's
"Triton is installed, but doesn't include CPU backend", where a Triton without a CPU back end is installed).

diagnose's own messages (progress, `warning:` and `error:` lines) are printed by diagnose and never affected.
A variable the user has set already (say VLLM_LOGGING_LEVEL=DEBUG) is kept, and its library left as it is.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    # read at interpreter start: reaches the processes started from here on (vLLM's engine and workers)
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
}
LIBRARIES = ("vllm", "transformers", "huggingface_hub", "datasets", "torch", "accelerate")

_quiet = False


def is_quiet() -> bool:
    """Whether `configure(False)` ran in this process (engines then turn their own progress bars off)."""
    return _quiet


def configure(verbose: bool = False) -> None:
    """Quiet the libraries (verbose=False), or leave their defaults (verbose=True). Call it early, before the
    models load; calling it again is harmless (verbose=True does not undo an earlier quiet call)."""
    global _quiet
    if verbose:
        return
    _quiet = True
    user_set = {name for name in QUIET_ENV if name in os.environ}
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    if "VLLM_LOGGING_LEVEL" not in user_set:
        logging.getLogger("vllm").setLevel(logging.ERROR)
    library_code = r"(%s)(\.|$)" % "|".join(LIBRARIES)
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=library_code)
    _quiet_huggingface(user_set)


def _quiet_huggingface(user_set: set[str]) -> None:
    """The environment covers libraries not imported yet; these calls cover those imported already (or
    imported here: huggingface_hub and transformers' logging module, which `run` and `plan` need anyway)."""
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hub_logging

    if "HF_HUB_VERBOSITY" not in user_set:
        hub_logging.set_verbosity_error()
    if "HF_HUB_DISABLE_PROGRESS_BARS" not in user_set:
        disable_progress_bars()
    from transformers.utils import logging as tf_logging

    if "TRANSFORMERS_VERBOSITY" not in user_set:
        tf_logging.set_verbosity_error()
    if "HF_HUB_DISABLE_PROGRESS_BARS" not in user_set:
        tf_logging.disable_progress_bar()
    datasets = sys.modules.get("datasets")  # not imported here: the environment covers a later import
    if datasets is not None:
        if "DATASETS_VERBOSITY" not in user_set:
            datasets.logging.set_verbosity_error()
        if "HF_DATASETS_DISABLE_PROGRESS_BARS" not in user_set:
            datasets.disable_progress_bars()
