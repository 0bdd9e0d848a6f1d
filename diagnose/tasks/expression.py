"""Safe exact evaluation of arithmetic expressions (integers, + - * /, parentheses) through `ast`, never eval.

Used by the countdown verifier (and to compute generated answers): values are Fractions, so 7/2*2 == 7.
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

MAX_LENGTH = 300  # longer "expressions" are not answers; refuse before parsing
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_SYMBOLS = {"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-", "\\times": "*", "\\cdot": "*", "\\div": "/"}


class ExpressionError(ValueError):
    """Not a plain arithmetic expression, or not computable (division by zero)."""


@dataclass(frozen=True)
class Evaluated:
    value: Fraction
    numbers: tuple[int, ...]  # every literal, in order of appearance


def normalize(text: str) -> str:
    """Map typographic and LaTeX operators to + - * /, brackets to parentheses; drop $ and \\( \\)."""
    for symbol, op in _SYMBOLS.items():
        text = text.replace(symbol, op)
    text = text.replace("\\left", "").replace("\\right", "").replace("\\(", "").replace("\\)", "")
    text = text.replace("[", "(").replace("]", ")").replace("{", "(").replace("}", ")").replace("$", "")
    return text.strip()


def evaluate(text: str) -> Evaluated:
    """Exact value and literals of `text`; raises ExpressionError for anything but ints, + - * /, ( )."""
    text = normalize(text)
    if not text or len(text) > MAX_LENGTH:
        raise ExpressionError("empty or too long")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError) as err:
        raise ExpressionError(f"not an expression: {err}") from None
    numbers: list[int] = []

    def walk(node) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ExpressionError("division by zero")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            numbers.append(node.value)
            return Fraction(node.value)
        raise ExpressionError(f"not allowed in an expression: {type(node).__name__}")

    value = walk(tree.body)
    return Evaluated(value, tuple(numbers))


def uses_allowed_numbers(used: tuple[int, ...], allowed: tuple[int, ...]) -> bool:
    """Each literal is one of the allowed numbers, each allowed number used at most as often as given."""
    return not (Counter(used) - Counter(allowed))


_CANDIDATE = re.compile(r"[\d\s()+\-*/×÷·−–\[\]]+")


def last_expression(text: str) -> str | None:
    """The last run of arithmetic characters holding an operator and a number: the left side of the last
    "expression = value" in free text ("so (3+5)*2 = 16." -> "(3+5)*2")."""
    best = None
    for line in normalize(text).splitlines():
        for side in line.split("="):
            for run in _CANDIDATE.findall(side):
                run = run.strip()
                if re.search(r"\d", run) and re.search(r"\d\s*[-+*/]\s*[\d(]|\)\s*[-+*/]", run):
                    best = run
    return best
