"""The run directory: created (or reopened) safely. A rerun with the same config resumes; a different config
there is refused; an unwritable location fails before any model is loaded."""

from __future__ import annotations

import os
from pathlib import Path

from .. import atomic
from ..errors import DiagnoseError
from .config import CONFIG_FILE, RunConfig, tomllib  # noqa: F401  (others import these from here)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically (diagnose.atomic.write_text; other modules import it from here)."""
    atomic.write_text(path, text)


def check_writable(out: Path) -> None:
    """Fail early (before loading any model) when `out` cannot become a writable directory. Creates nothing."""
    out = Path(out).expanduser()
    if out.exists():
        if not out.is_dir():
            raise DiagnoseError(f"output path {out} exists and is not a directory")
        target = out
    else:
        target = out.parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise DiagnoseError(f"cannot create output directory {out}: {target} is not a directory")
    if not os.access(target, os.W_OK | os.X_OK):
        raise DiagnoseError(f"cannot write to output directory {out}: {target} is not writable")


def open_run_dir(cfg: RunConfig) -> Path:
    """Create/validate `cfg.out`; return it. Raises DiagnoseError when unwritable or holding another config."""
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise DiagnoseError(f"output path {out} exists and is not a directory")
    existing = out / CONFIG_FILE
    if existing.exists():
        try:
            old = RunConfig.load(out)
        except DiagnoseError:
            raise DiagnoseError(f"{existing} is unreadable; use another --out or delete the directory") from None
        if old.digest() != cfg.digest():
            diff = sorted(k for k, v in cfg.identity().items() if old.identity().get(k) != v)
            raise DiagnoseError(
                f"{out} holds a run with a different config (differs in: {', '.join(diff)}); "
                "use another --out, or delete it to start over"
            )
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise DiagnoseError(f"cannot write to output directory {out}: {err.strerror or err}") from None
    write_atomic(existing, cfg.to_toml())
    return out
