"""Built-in generated tasks (no download): `arithmetic` and `countdown`, deterministic given a seed."""

from __future__ import annotations

import hashlib
import random
import re

from ..errors import DiagnoseError
from . import answers, expression
from .base import Question, Task, numeric_prompt
from .registry import register


def _generate(task: Task, n: int | None, seed: int, make, attempts: int = 3000) -> list[Question]:
    """n questions from `make(rng)`, distinct while the space allows (once `attempts` draws found nothing
    new, repeats are allowed from then on); questions(k) is a prefix of questions(k+1). Ids hash the
    content, so they differ between option settings."""
    if n is None:
        n = task.default_size
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(f"{task.name}:{seed}")
    out: list[Question] = []
    seen: set[str] = set()
    while len(out) < n:
        for _ in range(attempts):
            prompt, answer, solution, meta = make(rng)
            if prompt not in seen:
                break
        else:
            attempts = 1  # the space is exhausted
        seen.add(prompt)
        digest = hashlib.sha1(f"{prompt}\0{answer}".encode()).hexdigest()[:8]
        out.append(Question(f"{task.name}-{seed}-{len(out)}-{digest}", prompt, answer, solution, meta))
    return out


@register("arithmetic", digits=1, ops="+*", terms=2)
class Arithmetic(Task):
    """Evaluate `terms` integers of `digits` digits joined by operators drawn from `ops`;
    usual precedence."""

    def __init__(self, **options):
        super().__init__(**options)
        self.digits, self.ops, self.terms = int(options["digits"]), str(options["ops"]), int(options["terms"])
        if not 1 <= self.digits <= 12 or self.terms < 2 or not self.ops or set(self.ops) - set("+-*"):
            raise DiagnoseError(
                f"task arithmetic: need 1 <= digits <= 12, terms >= 2, ops drawn from '+-*' "
                f"(got digits={self.digits}, terms={self.terms}, ops={self.ops!r})"
            )

    def _make(self, rng: random.Random):
        lo, hi = (0 if self.digits == 1 else 10 ** (self.digits - 1)), 10**self.digits - 1
        values = [rng.randint(lo, hi) for _ in range(self.terms)]
        ops = [rng.choice(self.ops) for _ in range(self.terms - 1)]
        expr = str(values[0]) + "".join(f" {op} {v}" for op, v in zip(ops, values[1:], strict=True))
        value = expression.evaluate(expr).value
        answer = str(value.numerator)
        prompt = numeric_prompt(f"What is {expr}?")
        return prompt, answer, f"{expr} = {answer}", {"expression": expr, "values": values, "ops": ops}

    def questions(self, n: int | None = None, seed: int = 0) -> list[Question]:
        return _generate(self, n, seed, self._make)


@register("countdown", count=4, max_number=20, max_target=100)
class Countdown(Task):
    """Reach a target with + - * / and parentheses, using each of the given numbers at most once.

    The reference answer is one such expression (built first, so every question is solvable); `verify`
    accepts any expression that reaches the target exactly with the allowed numbers.
    """

    def __init__(self, **options):
        super().__init__(**options)
        self.count, self.max_number = int(options["count"]), int(options["max_number"])
        self.max_target = int(options["max_target"])
        if not 2 <= self.count <= 8 or self.max_number < 2 or self.max_target < 1:
            raise DiagnoseError(
                "task countdown: need 2 <= count <= 8, max_number >= 2, max_target >= 1 "
                f"(got count={self.count}, max_number={self.max_number}, max_target={self.max_target})"
            )

    def _make(self, rng: random.Random):
        while True:
            numbers = [rng.randint(1, self.max_number) for _ in range(self.count)]
            # Combine random pairs (using every number) until one expression remains; keep it when its
            # value is a whole number in range and the last step is not a trivial identity.
            terms = [(str(v), v) for v in numbers]
            while len(terms) > 1:
                (a, va), (b, vb) = (terms.pop(rng.randrange(len(terms))) for _ in range(2))
                op = rng.choice("+-*/")
                if op == "-" and va < vb:
                    (a, va), (b, vb) = (b, vb), (a, va)
                if op == "/" and (vb == 0 or va % vb):
                    op = rng.choice("+-*")
                    if op == "-" and va < vb:
                        (a, va), (b, vb) = (b, vb), (a, va)
                value = {"+": va + vb, "-": va - vb, "*": va * vb, "/": va // vb if vb else 0}[op]
                terms.append((f"({a} {op} {b})", value))
            expr, target = terms[0]
            if 1 <= target <= self.max_target and target not in numbers:
                break
        expr = expr[1:-1]
        assert expression.evaluate(expr).value == target
        listed = ", ".join(map(str, numbers))
        prompt = (
            f"Using the numbers {listed}, each at most once, and the operations +, -, *, / with parentheses, "
            f"write an expression that equals {target}. Think step by step, then write the expression on "
            f'its own last line in the form "Answer: <expression>".'
        )
        return prompt, expr, f"{expr} = {target}", {"numbers": numbers, "target": target}

    def questions(self, n: int | None = None, seed: int = 0) -> list[Question]:
        return _generate(self, n, seed, self._make)

    def final_answer(self, text: str) -> str | None:
        """The expression on the first "Answer:" line (without a trailing "= target"), else the last
        arithmetic expression in the text."""
        for match in answers.answer_lines(text):
            line = match.group(1).strip().rstrip(".").strip()
            boxed = answers.last_boxed(line)
            line = boxed if boxed is not None else line
            parts = [part.strip() for part in line.split("=")]
            with_op = [p for p in parts if re.search(r"\d\s*[-+*/×÷]\s*[\d(]|\)\s*[-+*/×÷]", p)]
            chosen = with_op[0] if with_op else parts[0]
            if any(ch.isdigit() for ch in chosen):
                return chosen
        return expression.last_expression(answers.answer_region(text))

    def verify(self, question: Question, completion: str) -> bool:
        candidate = self.final_answer(completion)
        if candidate is None:
            return False
        try:
            result = expression.evaluate(candidate)
        except expression.ExpressionError:
            return False
        allowed = tuple(question.meta["numbers"])
        return result.value == question.meta["target"] and expression.uses_allowed_numbers(
            result.numbers, allowed
        )

    def answer_end(self, text: str) -> int | None:
        return answers.answer_line_end(text, holds_answer=lambda line: any(ch.isdigit() for ch in line))


@register("digitsum", digits=4, modulus=3, length=8)
class DigitSum(Task):
    """The exact engine's task (`--engine exact`, whose Q and V are known): `length` digits below `digits`
    then '='; a response is correct when its digits sum to the prompt's digit sum mod `modulus`."""

    stop: tuple[str, ...] = ()

    def __init__(self, **options):
        super().__init__(**options)
        self.digits, self.modulus, self.length = (int(options[k]) for k in ("digits", "modulus", "length"))
        if not 2 <= self.digits <= 10 or self.modulus < 2 or self.length < 1:
            raise DiagnoseError(
                f"task digitsum: need 2 <= digits <= 10, modulus >= 2, length >= 1 (got digits={self.digits}, "
                f"modulus={self.modulus}, length={self.length})"
            )

    def _make(self, rng: random.Random):
        values = [rng.randrange(self.digits) for _ in range(self.length)]
        target = sum(values) % self.modulus
        return "".join(map(str, values)) + "=", str(target), None, {}

    def questions(self, n: int | None = None, seed: int = 0) -> list[Question]:
        return _generate(self, n, seed, self._make)

    def final_answer(self, text: str) -> str | None:
        return str(self._sum(text) % self.modulus)

    def verify(self, question: Question, completion: str) -> bool:
        return self._sum(completion) % self.modulus == int(question.answer)

    def answer_end(self, text: str) -> int | None:
        return None  # every digit up to the end token counts

    def _sum(self, text: str) -> int:
        return sum(int(ch) for ch in text if ch.isdigit() and int(ch) < self.digits)
