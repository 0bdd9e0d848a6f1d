"""Context builders: the privileged information a self-distillation teacher sees (never the student).

Each builder turns a question (plus, for some, the student's own verified rollouts) into the teacher's chat
messages. The teacher's whole context is kept: nothing is truncated to the student's prompt length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DiagnoseError
from ..registry import Registry

# name -> builder(inputs, value) -> the teacher's chat messages. A context whose defaults hold "value" takes
# one (`system=<text>`); its label shows the placeholder. Registration order is the order listings show.
_CONTEXTS = Registry("context", sort=False)

# label -> description, what `diagnose ls contexts` prints (a live view of the registry).
CONTEXTS = _CONTEXTS.listing()


@dataclass
class ContextInputs:
    """What a context may draw on for one question."""

    question: str  # the student's prompt text
    answer: str
    solution: str | None = None
    summary: str | None = None
    correct_example: str | None = None
    incorrect_example: str | None = None


Builder = Callable[[ContextInputs, "str | None"], list[dict]]


def parse_context(context: str) -> tuple[str, str | None]:
    """`answer` -> ("answer", None); `system=Be careful` -> ("system", "Be careful") (the value is everything
    after the first '=', so it may hold ':', ',' and '='); unknown -> DiagnoseError listing the contexts."""
    name, eq, value = context.partition("=")
    if name not in _CONTEXTS:
        raise _CONTEXTS.unknown(context)
    entry = _CONTEXTS.entries[name]
    if "value" in entry.defaults:
        if not value:
            raise DiagnoseError(f"context {context!r} needs a value: {entry.label}")
        return name, value
    if eq:
        raise DiagnoseError(f"context {context!r}: {name} takes no value")
    return name, None


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


def register_context(name: str, builder: Builder, doc: str, value: str | None = None) -> None:
    """Add a context: `builder(inputs, arg) -> chat messages` for the teacher, `doc` for the listing. With
    `value` (a placeholder such as "<text>") the context is used as `name=<value>` and `arg` is the value;
    otherwise `arg` is None. Registering a name again replaces it."""
    defaults = {} if value is None else {"value": value}
    _CONTEXTS.add(name, builder, defaults, doc=doc, label=f"{name}={value}" if value else name, replace=True)


register_context("none", _none, "the student's own prompt (an external model without extra context)")
register_context("answer", _answer, "the reference final answer only")
register_context("solution", _solution, "the reference worked solution")
register_context(
    "summary", _summary, "a short summary of the reference solution (from the data, or written once and cached)"
)
register_context(
    "contrastive", _contrastive,
    "one correct and one incorrect solution (from the data or the student's own verified rollouts)",
)
register_context("system", _system, "a system-prompt hint", value="<text>")
register_context(
    "template", _template, "a user template with {question}, {solution} and {answer} placeholders", value="<path>"
)


def build_messages(context: str, inputs: ContextInputs) -> list[dict]:
    """The teacher's chat messages for one question under `context`."""
    name, arg = parse_context(context)
    return _CONTEXTS.get(name)(inputs, arg)


def available() -> list[str]:
    """Every context as used: `answer`, ..., `system=<text>`, `template=<path>`."""
    return _CONTEXTS.choices()
