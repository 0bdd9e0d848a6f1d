"""External teachers must share the student's tokenizer: checked before any work, refused with a reason."""

from __future__ import annotations

from ..errors import DiagnoseError

SAMPLE_STRINGS = (
    "The answer is 42.",
    "Let's think step by step: 17 * 23 = 391.",
    "\\boxed{\\frac{3}{4}}",
    "  indented\n\ttabs and unicode: π ≈ 3.14159, café, 東京",
    "Answer:",
)
SPECIAL = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def tokenizer_differences(student_tok, teacher_tok) -> list[str]:
    """Human-readable differences between two tokenizers (empty when they are interchangeable)."""
    diffs = []
    if len(student_tok) != len(teacher_tok):
        diffs.append(f"vocabulary size {len(student_tok)} vs {len(teacher_tok)}")
    for attr in SPECIAL:
        a, b = getattr(student_tok, attr, None), getattr(teacher_tok, attr, None)
        if a != b:
            diffs.append(f"{attr} {a} vs {b}")
    for text in SAMPLE_STRINGS:
        a, b = _ids(student_tok, text), _ids(teacher_tok, text)
        if a != b:
            diffs.append(f"ids of {text!r}: {a[:8]}... vs {b[:8]}...")
            break
    return diffs


def _ids(tokenizer, text: str) -> list:
    """Token ids of `text`, or the refusal of a tokenizer that has no tokens for it (a toy vocabulary)."""
    try:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    except DiagnoseError as err:
        return [f"refused: {err}"]


def check_compatible(
    student_tok, teacher_tok, teacher_name: str, student_vocab: int | None = None, teacher_vocab: int | None = None
) -> None:
    """Raise DiagnoseError naming what differs; logits widths must match too (padded vocabularies)."""
    diffs = tokenizer_differences(student_tok, teacher_tok)
    if student_vocab is not None and teacher_vocab is not None and student_vocab != teacher_vocab:
        diffs.append(f"logit width {student_vocab} vs {teacher_vocab}")
    if diffs:
        raise DiagnoseError(f"teacher {teacher_name} does not share the student's tokenizer: " + "; ".join(diffs))
