"""The Task contract: questions with reference answers, a verifier, and where generation may stop."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Sequence

from . import answers

# The model moved on to a new exchange: nothing after this can change the verdict. Kept to markers that do
# not occur inside ordinary reasoning (lm-evaluation-harness stops GSM8K at "Question:" the same way).
NEW_TURN_STOPS: tuple[str, ...] = ("\nQuestion:", "\nProblem:", "\nUser:", "\nHuman:")

NUMERIC_FORMAT = (
    'Think step by step, then write the final answer on its own last line in the form "Answer: <number>".'
)
BOXED_FORMAT = "Think step by step, then put the final answer in \\boxed{} on the last line."


@dataclass
class Question:
    """One problem: the user message the student sees, the reference final answer, an optional solution."""

    id: str
    prompt: str
    answer: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class: subclasses set `name` (by `register`), `options`, and implement `_all_questions` or
    `questions`, plus `verify` (and `final_answer` when the answer is not a number)."""

    name: ClassVar[str] = "task"
    stop: tuple[str, ...] = NEW_TURN_STOPS
    default_size: ClassVar[int] = 100  # questions(None) for generated tasks

    def __init__(self, **options):
        self.options = dict(options)

    # -- questions ---------------------------------------------------------------------------------------
    def questions(self, n: int | None = None, seed: int = 0) -> list[Question]:
        """n questions, the same ones for the same seed; questions(k) is a prefix of questions(k+1).

        File-backed tasks: n=None gives every row in file order, else a seeded sample (file order kept).
        """
        rows = self._all_questions()
        if n is None or n >= len(rows):
            return list(rows)
        if n < 0:
            raise ValueError("n must be >= 0")
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        return [rows[i] for i in sorted(order[:n])]

    def _all_questions(self) -> Sequence[Question]:
        raise NotImplementedError

    # -- verification ------------------------------------------------------------------------------------
    def final_answer(self, text: str) -> str | None:
        """The final answer a completion states (what `verify` compares), for reports."""
        return answers.numeric_final_answer(text)

    def verify(self, question: Question, completion: str) -> bool:
        """Is the completion's final answer correct for `question`?"""
        return answers.numbers_equal(self.final_answer(completion), question.answer)

    def verify_many(self, pairs: Iterable[tuple[Question, str]]) -> list[bool]:
        """Batched `verify` (file tasks with symbolic answers override it with a process pool)."""
        return [self.verify(q, text) for q, text in pairs]

    def answer_end(self, text: str) -> int | None:
        """Offset in a partial completion at which its verdict is fixed, or None: an engine that can run a
        check during decoding may stop there (the plain `stop` strings cannot express "the newline after
        the Answer: line"). Cutting a completion there never changes `verify`."""
        return answers.answer_line_end(text)

    def trim(self, text: str) -> str:
        """The completion cut where its verdict became fixed (identity when it never did)."""
        end = self.answer_end(text)
        return text if end is None else text[:end]

    def describe(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return self.name + (":" + opts if opts else "")

    def __repr__(self) -> str:
        return f"<Task {self.describe()}>"


def numeric_prompt(problem: str) -> str:
    return f"{problem.strip()}\n\n{NUMERIC_FORMAT}"


def boxed_prompt(problem: str) -> str:
    return f"{problem.strip()}\n\n{BOXED_FORMAT}"
