"""Context builders: the privileged information a self-distillation teacher sees (never the student).

Each builder turns a question (plus, for some, the student's own verified rollouts) into the teacher's chat
messages. The teacher's whole context is kept: nothing is truncated to the student's prompt length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DiagnoseError

CONTEXTS: dict[str, str] = {
    "none": "the student's own prompt (an external model without extra context)",
    "answer": "the reference final answer only",
    "solution": "the reference worked solution",
    "summary": "a short summary of the reference solution (from the data, or written once and cached)",
    "contrastive": "one correct and one incorrect solution (from the data or the student's own verified rollouts)",
    "system=<text>": "a system-prompt hint",
    "template=<path>": "a user template with {question}, {solution} and {answer} placeholders",
}


@dataclass
class ContextInputs:
    """What a context may draw on for one question."""

    question: str  # the student's prompt text
    answer: str
    solution: str | None = None
    summary: str | None = None
    correct_example: str | None = None
    incorrect_example: str | None = None


def parse_context(context: str) -> tuple[str, str | None]:
    """`answer` -> ("answer", None); `system=Be careful` -> ("system", "Be careful"); unknown -> DiagnoseError."""
    name, eq, arg = context.partition("=")
    if eq and name in ("system", "template"):
        if not arg:
            raise DiagnoseError(f"context {context!r} needs a value after '='")
        return name, arg
    if not eq and name in CONTEXTS:
        return name, None
    raise DiagnoseError(f"unknown context {context!r}; available: {', '.join(CONTEXTS)}")


def _with_hint(inputs: ContextInputs, hint: str) -> list[dict]:
    return [{"role": "user", "content": f"{inputs.question}\n\n{hint}"}]


def _need(value: str | None, what: str, context: str) -> str:
    if not value:
        raise DiagnoseError(f"context {context!r} needs {what}, and this question has none")
    return value


def _answer(inputs: ContextInputs, arg) -> list[dict]:
    return _with_hint(inputs, f"(Hint: the correct final answer is {inputs.answer}.)")


def _solution(inputs: ContextInputs, arg) -> list[dict]:
    sol = _need(inputs.solution, "a reference solution", "solution")
    return _with_hint(inputs, f"Here is a correct reference solution:\n{sol}\n\nNow write your own solution.")


def _summary(inputs: ContextInputs, arg) -> list[dict]:
    summ = _need(inputs.summary, "a summary", "summary")
    return _with_hint(inputs, f"(Hint: the key idea of a correct solution: {summ})")


def _contrastive(inputs: ContextInputs, arg) -> list[dict]:
    right = _need(inputs.correct_example or inputs.solution, "a correct example", "contrastive")
    wrong = inputs.incorrect_example
    parts = [f"Here is a correct solution:\n{right}"]
    if wrong:
        parts.append(f"Here is an incorrect solution; avoid its mistake:\n{wrong}")
    return _with_hint(inputs, "\n\n".join(parts) + "\n\nNow write your own solution.")


def _system(inputs: ContextInputs, text: str) -> list[dict]:
    return [{"role": "system", "content": text}, {"role": "user", "content": inputs.question}]


def _template(inputs: ContextInputs, path: str) -> list[dict]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DiagnoseError(f"template file not found: {file}")
    try:
        text = file.read_text().format(question=inputs.question, solution=inputs.solution or "", answer=inputs.answer)
    except (KeyError, IndexError, ValueError) as err:
        raise DiagnoseError(
            f"template {file}: bad placeholder ({err}); use {{question}}, {{solution}}, {{answer}}"
        ) from None
    return [{"role": "user", "content": text}]


def _none(inputs: ContextInputs, arg) -> list[dict]:
    return [{"role": "user", "content": inputs.question}]


BUILDERS: dict[str, Callable[[ContextInputs, str | None], list[dict]]] = {
    "none": _none,
    "answer": _answer,
    "solution": _solution,
    "summary": _summary,
    "contrastive": _contrastive,
    "system": _system,
    "template": _template,
}


def register_context(name: str, builder: Callable[[ContextInputs, str | None], list[dict]], doc: str) -> None:
    """Add a context: `builder(inputs, arg) -> chat messages` for the teacher."""
    BUILDERS[name] = builder
    CONTEXTS[name] = doc


def build_messages(context: str, inputs: ContextInputs) -> list[dict]:
    """The teacher's chat messages for one question under `context`."""
    name, arg = parse_context(context)
    return BUILDERS[name](inputs, arg)


def available() -> list[str]:
    return list(CONTEXTS)
