"""File-backed tasks: GSM8K-style and MATH-style JSONL/CSV/Parquet, and any file with a column mapping.
`gsm8k` and `math` without path= read the standard data set (GSM8K test, MATH-500) through `datasets`, from the
hub or its local cache; its rows go through the same mapping as a file's."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import DiagnoseError
from . import answers, mathverify
from .base import Question, Task, boxed_prompt, numeric_prompt
from .registry import register
from .rows import Row, describe_dataset, read_dataset, read_rows

_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: "2*3=<<2*3=6>>6"
KINDS = ("numeric", "math")


def split_gsm8k(text: str) -> tuple[str, str] | None:
    """A GSM8K answer field -> (worked solution without calculator notes, final answer); None without ####."""
    if "####" not in text:
        return None
    solution, _, final = text.rpartition("####")
    return _CALCULATOR.sub("", solution).strip(), final.strip()


class FileTask(Task):
    """Common parts: a path option, rows read once on first use, questions in file order.

    `dataset` = (name, config, split): read that Hugging Face data set when no path is given (loaded in the
    constructor, so a data set that is not available fails in `tasks.get`); `columns`: what a file needs."""

    kind = "numeric"
    dataset: tuple[str, str | None, str] | None = None
    columns = ""

    def __init__(self, **options):
        super().__init__(**options)
        self.path: Path | None = None
        self._dataset_rows = None
        if not options.get("path"):
            if self.dataset is None:
                raise DiagnoseError(f"task {self.name!r} needs a data file: {self.name}:path=/path/to/file.jsonl")
            self._dataset_rows = read_dataset(*self.dataset, columns=self.columns)
            self.source = describe_dataset(*self.dataset)  # where errors and question meta say rows come from
            self.stem = self.dataset[0].rpartition("/")[2]  # ids: "gsm8k:row12"
            return
        self.path = Path(str(options["path"])).expanduser()
        if not self.path.is_file():
            raise DiagnoseError(f"{self.path}: no such data file (task {self.name})")
        self.source, self.stem = self.path, self.path.stem

    @cached_property
    def _rows(self) -> list[Question]:
        rows = self._dataset_rows if self._dataset_rows is not None else read_rows(self.path)
        if not rows:
            raise DiagnoseError(f"{self.source}: no rows")
        return [self._question(row) for row in rows]

    def _all_questions(self) -> Sequence[Question]:
        return self._rows

    def _question(self, row: Row) -> Question:
        raise NotImplementedError

    def _id(self, row: Row, column: str | None = None) -> str:
        value = row.data.get(column) if column else None
        return str(value) if value not in (None, "") else f"{self.stem}:{row.where.replace(' ', '')}"

    # Symbolic verification when kind == "math"; numeric otherwise.
    def final_answer(self, text: str) -> str | None:
        if self.kind != "math":
            return super().final_answer(text)
        region = answers.answer_region(text)
        boxed = answers.last_boxed(region)
        if boxed is not None:
            return boxed
        lines = answers.answer_lines(text)
        return lines[0].group(1).strip() if lines else None

    def verify(self, question: Question, completion: str) -> bool:
        return self.verify_many([(question, completion)])[0]

    def verify_many(self, pairs: Iterable[tuple[Question, str]]) -> list[bool]:
        pairs = list(pairs)
        if self.kind != "math":
            return [answers.numbers_equal(self.final_answer(t), q.answer) for q, t in pairs]
        return mathverify.check_many([(q.answer, answers.answer_region(t)) for q, t in pairs])

    def answer_end(self, text: str) -> int | None:
        if self.kind != "math":
            return super().answer_end(text)
        # The line holding the first complete \boxed{} of the answer region ("\boxed{3}$." ends with it).
        end = answers.boxed_end(text)
        if end is None:
            return None
        newline = text.find("\n", end)
        return None if newline < 0 else newline + 1


@register("gsm8k", path=None)
class GSM8K(FileTask):
    """GSM8K-style rows: `question`, and `answer` = worked solution + "#### <number>". Without path=, the GSM8K
    test split (openai/gsm8k, config main) through `datasets`."""

    dataset = ("openai/gsm8k", "main", "test")
    columns = "question, answer"

    def _question(self, row: Row) -> Question:
        question = row.text(self.source, "question")
        split = split_gsm8k(row.text(self.source, "answer"))
        if split is None:
            raise row.error(self.source, "answer has no '#### <number>' final line")
        solution, final = split
        if answers.to_number(final) is None:
            raise row.error(self.source, f"final answer {final!r} after #### is not a number")
        return Question(self._id(row), numeric_prompt(question), final, solution, {"source": str(self.source)})


@register("math", path=None)
class MATH(FileTask):
    """MATH-style rows: `problem`, `solution` with \\boxed{} (the last one is the answer unless an `answer`
    column is given), optional `level`, `subject`/`type`, `unique_id`. Verified with math-verify. Without
    path=, MATH-500 (HuggingFaceH4/MATH-500, split test) through `datasets`."""

    kind = "math"
    dataset = ("HuggingFaceH4/MATH-500", None, "test")
    columns = "problem, solution, answer"

    def _question(self, row: Row) -> Question:
        problem = row.text(self.source, "problem")
        solution = row.text(self.source, "solution", required=False)
        answer = row.text(self.source, "answer", required=False)
        if answer is None:
            answer = answers.last_boxed(solution) if solution else None
            if answer is None:
                raise row.error(self.source, "solution has no \\boxed{} answer and there is no answer column")
        meta = {k: row.data[k] for k in ("level", "subject", "type") if row.data.get(k) is not None}
        return Question(self._id(row, "unique_id"), boxed_prompt(problem), answer.strip(), solution, meta)


@register("file", path=None, question="question", answer="answer", solution="", id="", kind="numeric")
class UserFile(FileTask):
    """Any JSONL/CSV/Parquet file with a column mapping; kind=numeric (exact number) or math (math-verify).
    An answer holding "#### <number>" is split GSM8K-style."""

    def __init__(self, **options):
        super().__init__(**options)
        if options["kind"] not in KINDS:
            raise DiagnoseError(f"task file: kind must be one of {', '.join(KINDS)}, got {options['kind']!r}")
        self.kind = options["kind"]

    def _question(self, row: Row) -> Question:
        o = self.options
        problem = row.text(self.path, o["question"])
        answer = row.text(self.path, o["answer"])
        solution = row.text(self.path, o["solution"]) if o["solution"] else None
        split = split_gsm8k(answer)
        if split is not None:
            solution, answer = solution or split[0], split[1]
        if self.kind == "numeric" and answers.to_number(answer) is None:
            message = f"answer {answer!r} in column {o['answer']!r} is not a number (kind=numeric)"
            raise row.error(self.path, message)
        prompt = boxed_prompt(problem) if self.kind == "math" else numeric_prompt(problem)
        meta = {"source": str(self.path)}
        return Question(self._id(row, o["id"] or None), prompt, answer.strip(), solution, meta)
