"""Teacher configuration: which model scores the student's prefixes, and with what privileged context.

CLI specs (the same keys work in TOML as `{model = "...", context = "..."}` or `{spec = "..."}`):
`self:answer`, `self:solution`, `self:summary`, `self:contrastive`, `self:system=<text>`,
`self:template=<path>`, `self` (no context), `model=<id-or-path>` and `model=<id-or-path>:<context>`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DiagnoseError
from .contexts import CONTEXTS, parse_context


@dataclass(frozen=True)
class TeacherConfig:
    """model = "self" (the student with extra context) or a Hugging Face id / local path."""

    model: str = "self"
    context: str = "none"  # a registered context name, or "system=<text>" / "template=<path>"

    @property
    def is_self(self) -> bool:
        return self.model == "self"

    @property
    def label(self) -> str:
        """The spec string (round-trips through `parse_teacher`)."""
        if self.is_self:
            return "self" if self.context == "none" else f"self:{self.context}"
        return f"model={self.model}" + ("" if self.context == "none" else f":{self.context}")


def parse_teacher(spec: str | dict) -> TeacherConfig:
    """Parse a CLI spec string or a TOML table into a TeacherConfig (DiagnoseError on bad input)."""
    if isinstance(spec, dict):
        if "spec" in spec:
            return parse_teacher(str(spec["spec"]))
        unknown = set(spec) - {"model", "context"}
        if unknown:
            raise DiagnoseError(f"teacher table has unknown keys {sorted(unknown)} (use model, context or spec)")
        cfg = TeacherConfig(str(spec.get("model", "self")), str(spec.get("context", "none")))
        parse_context(cfg.context)
        return cfg
    text = spec.strip()
    if text == "self":
        return TeacherConfig()
    if text.startswith("self:"):
        context = text[len("self:") :]
        parse_context(context)
        return TeacherConfig("self", context)
    if text.startswith("model="):
        body = text[len("model=") :]
        model, context = body, "none"
        # the context is whatever follows the last ':' that starts a known context (paths may contain ':')
        for i in range(len(body) - 1, -1, -1):
            if body[i] == ":" and _is_context(body[i + 1 :]):
                model, context = body[:i], body[i + 1 :]
                break
        if not model:
            raise DiagnoseError(f"teacher spec {spec!r}: empty model")
        return TeacherConfig(model, context)
    raise DiagnoseError(
        f"bad teacher spec {spec!r}: expected self[:<context>] or model=<id-or-path>[:<context>]; "
        f"contexts: {', '.join(CONTEXTS)}"
    )


def _is_context(text: str) -> bool:
    try:
        parse_context(text)
        return True
    except DiagnoseError:
        return False
