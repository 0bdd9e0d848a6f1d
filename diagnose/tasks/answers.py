"""Final-answer extraction shared by the verifiers: "Answer:" lines, last-number fallback, \\boxed{}.

Everything here is pure string work (no sympy), cheap enough to run on every rollout and in reports.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# A number as people and models write it: sign, thousands commas, decimals, optional leading $.
# A minus right after a digit or ")" is subtraction, not a sign ("3-4" holds 3 and 4).
_NUMBER = r"(?:(?<![\w)])-)?(?:\$[^\S\n]?)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
NUMBER_RE = re.compile(_NUMBER)
_GROUPED = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# "Answer: 12", "**Answer:** 12", "answer = 12", "Final answer: $12". The line's text follows the colon.
# GSM8K's own "#### 18" counts as an answer line too (not a markdown heading: a number must follow).
ANSWER_LINE_RE = re.compile(
    r"(?im)^[^\S\n]*(?:####(?=[^\S\n]*-?\$?\d)|[*_#>]*[^\S\n]*(?:the[^\S\n]+)?(?:final[^\S\n]+)?answer[*_]*"
    r"[^\S\n]*(?:is)?[^\S\n]*[:=])[*_]*[^\S\n]*(.*)$"
)


def answer_region(text: str) -> str:
    """The part of a completion that may hold the final answer: after the last </think> when the model
    reasoned in a think block; before an unclosed <think> (still thinking: nothing final yet)."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[0]
    return text


def answer_lines(text: str) -> list[re.Match]:
    """Every "Answer: ..." line in the answer region (matches on that region's text)."""
    return list(ANSWER_LINE_RE.finditer(answer_region(text)))


def last_number(text: str) -> str | None:
    """The last number in `text` as written (commas and $ kept; normalise with `to_number`)."""
    found = NUMBER_RE.findall(text)
    return found[-1] if found else None


def first_number(text: str) -> str | None:
    found = NUMBER_RE.findall(text)
    return found[0] if found else None


def line_number(line: str) -> str | None:
    """The number an "Answer:" line states: inside its \\boxed{} if any, else the first number after its
    last "=" ("Answer: 3 + 4 = 7" -> 7; "Answer: 12 apples." -> 12)."""
    boxed = last_boxed(line)
    if boxed is not None:
        line = boxed
    number = first_number(line.rsplit("=", 1)[-1]) or first_number(line)
    return None if number is None else number.replace("$", "").replace(" ", "")


def numeric_final_answer(text: str) -> str | None:
    """The final number of a completion: the number on the first "Answer:" line that has one (generation
    stops there, see `answer_line_end`), else the last number of the answer region (small models rarely
    follow the format)."""
    region = answer_region(text)
    for match in ANSWER_LINE_RE.finditer(region):
        number = line_number(match.group(1))
        if number is not None:
            return number
    number = last_number(region)
    return None if number is None else number.replace("$", "").replace(" ", "")


def to_number(text: str | None) -> Fraction | None:
    """'1,234.50', '$12', '12.0', '-3', '3/4' -> exact Fraction; None when it is not a number."""
    if text is None:
        return None
    s = text.strip().replace("$", "").replace(" ", "").rstrip(".")
    if "," in s:
        if not _GROUPED.fullmatch(s):
            return None  # "1,2,3" is a list, not 123
        s = s.replace(",", "")
    if s.startswith("+"):
        s = s[1:]
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(predicted: str | None, reference: str | None) -> bool:
    """Exact numeric equality after normalisation (12 == 12.0 == 12.00 == $12 == 1,2 is not 12)."""
    a, b = to_number(predicted), to_number(reference)
    return a is not None and b is not None and a == b


def answer_line_end(text: str, holds_answer: Callable[[str], object] | None = None) -> int | None:
    """Offset just past the newline that ends the first "Answer:" line holding an answer (by default: a
    number), or None. This is where a continuation's verdict is fixed: an engine may stop generating there.
    """
    holds_answer = holds_answer or line_number
    region = answer_region(text)
    offset = len(text) - len(region) if THINK_CLOSE in text else 0
    for match in ANSWER_LINE_RE.finditer(region):
        if not holds_answer(match.group(1)):
            continue
        end = match.end()
        if end < len(region) and region[end] == "\n":
            return offset + end + 1
        return None  # the answer line is not finished yet (the number may still grow)
    return None


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every complete \\boxed{...} / \\fbox{...}, nested braces handled."""
    spans = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):  # skip escaped characters such as \{ and \}
                i += 2
                continue
            depth += ch == "{"
            depth -= ch == "}"
            i += 1
        if depth == 0:
            spans.append((match.start(), i, text[match.end() : i - 1].strip()))
    # "\boxed 5" (no braces) is rare in models, common enough in MATH to support.
    for match in re.finditer(r"\\boxed ([^\s${][^\s$]*)", text):
        spans.append((match.start(), match.end(), match.group(1)))
    return sorted(spans)


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} in `text` (nested braces handled), or None."""
    spans = boxed_spans(text)
    return spans[-1][2] if spans else None


def boxed_end(text: str) -> int | None:
    """Offset just past the first complete \\boxed{...} of the answer region, or None."""
    region = answer_region(text)
    offset = len(text) - len(region) if THINK_CLOSE in text else 0
    spans = boxed_spans(region)
    return offset + spans[0][1] if spans else None
