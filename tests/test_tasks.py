"""Task layer: registry, generated tasks, real GSM8K / MATH-500 files, verifiers, malformed files."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest

from diagnose import tasks
from diagnose.errors import DiagnoseError
from diagnose.tasks import answers, expression, mathverify

# --------------------------------------------------------------------------- registry


def test_registry_lists_builtins_and_refuses_unknown_names():
    assert {"arithmetic", "countdown", "gsm8k", "math", "file"} <= set(tasks.available())
    with pytest.raises(DiagnoseError, match="unknown task 'nope'.*arithmetic.*countdown"):
        tasks.get("nope")
    with pytest.raises(DiagnoseError, match="has no option bogus"):
        tasks.get("arithmetic:bogus=1")
    with pytest.raises(DiagnoseError, match="digits=x"):
        tasks.get("arithmetic:digits=x")
    with pytest.raises(DiagnoseError, match="needs a data file"):
        tasks.get("file")  # (gsm8k and math without path= read the standard data set: test_hub.py)


def test_spec_options_reach_the_task():
    task = tasks.get("arithmetic:digits=2,terms=3,ops=-")
    for q in task.questions(20, seed=0):
        values = q.meta["values"]
        assert len(values) == 3 and all(10 <= v <= 99 for v in values) and set(q.meta["ops"]) == {"-"}
    assert tasks.get("arithmetic", digits=3).digits == 3  # keyword options
    assert tasks.get("countdown:count=3").questions(1)[0].meta["numbers"].__len__() == 3


# --------------------------------------------------------------------------- arithmetic


def test_arithmetic_is_deterministic_by_seed_and_answers_are_right():
    task = tasks.get("arithmetic:ops=+-*,terms=3")
    a, b = task.questions(50, seed=7), task.questions(50, seed=7)
    assert [q.prompt for q in a] == [q.prompt for q in b] and [q.answer for q in a] == [q.answer for q in b]
    assert [q.prompt for q in a] != [q.prompt for q in task.questions(50, seed=8)]
    assert [q.prompt for q in task.questions(10, seed=7)] == [q.prompt for q in a[:10]]  # prefix-stable
    assert len({q.prompt for q in a}) == 50  # distinct while the space allows
    for q in a:
        expr = q.meta["expression"]
        assert re.fullmatch(r"[\d +*-]+", expr)
        assert int(q.answer) == eval(expr)  # test-side reference only: the expression is digits and + - *
        assert expr in q.prompt and "Answer:" in q.prompt and "step by step" in q.prompt
    assert len(task.questions(seed=0)) == task.default_size
    small = tasks.get("arithmetic:ops=+")  # 100 distinct problems: all of them before any repeat
    assert len({q.prompt for q in small.questions(100, seed=0)}) == 100
    assert [q.id for q in small.questions(120, seed=0)[:100]] == [q.id for q in small.questions(100, seed=0)]
    assert len({q.id for q in a} | {q.id for q in small.questions(50, seed=7)}) == 100  # ids differ


@pytest.mark.parametrize(
    "text, ok",
    [
        ("4 * 3 is twelve.\nAnswer: 12", True),
        ("Answer: 12.", True),
        ("Answer: 12.0", True),
        ("**Answer:** 12", True),
        ("The final answer is: $12$", True),
        ("Answer: \\boxed{12}", True),
        ("Answer: 4 * 3 = 12", True),
        ("We multiply 4 by 3. So 4 * 3 = 12", True),  # last-number fallback
        ("4 times 3 gives 12 apples", True),
        ("= 12", True),
        ("Answer: 12\nQuestion: what is 5 + 6? 11", True),  # the first Answer line is the verdict
        ("Answer: 13", False),
        ("Answer: 1.2", False),
        ("Answer: 120", False),
        ("4 * 3 = 12, then plus 1 is 13", False),
        ("12 is wrong, it is -12", False),
        ("no number here", False),
        ("<think>it is 12</think>I give up", False),  # reasoning inside <think> does not count
        ("<think>maybe 11</think>Answer: 12", True),
    ],
)
def test_arithmetic_verifier_formats(text, ok):
    task = tasks.get("arithmetic")
    q = tasks.Question("q", "What is 4 * 3?", "12")
    assert task.verify(q, text) is ok
    assert task.verify_many([(q, text)]) == [ok]


def test_numbers_tolerate_commas_dollars_and_trailing_zero():
    assert answers.numbers_equal("$1,234.00", "1234")
    assert answers.numbers_equal(answers.numeric_final_answer("Total: $1,234"), "1234")
    assert not answers.numbers_equal("1,2,3", "123")
    assert answers.numeric_final_answer("10 - 5 leaves 5") == "5"
    assert answers.numeric_final_answer("3-4") == "4"  # a minus after a digit is subtraction
    assert answers.numeric_final_answer("it is -3") == "-3"


def test_answer_end_is_where_the_verdict_is_fixed():
    task = tasks.get("arithmetic")
    q = tasks.Question("q", "", "12")
    text = "3 * 4 = 12\nAnswer: 12\nNow let me also compute 99 + 1 = 100."
    end = task.answer_end(text)
    assert text[:end] == "3 * 4 = 12\nAnswer: 12\n"
    assert task.verify(q, task.trim(text)) and task.verify(q, text)
    assert task.answer_end("Answer: 1") is None  # the number may still grow ("12")
    assert task.answer_end("Answer:\nthinking") is None
    assert task.trim("no answer yet") == "no answer yet"
    thought = "<think>Answer: 5\n</think>Answer: 12\n"
    assert task.answer_end(thought + "more") == len(thought)
    assert "\nQuestion:" in task.stop and all("\n" != s for s in task.stop)


# --------------------------------------------------------------------------- countdown


def _cd(numbers, target):
    return tasks.Question("c", "", "", None, {"numbers": list(numbers), "target": target})


def test_countdown_generation_is_deterministic_and_references_verify():
    task = tasks.get("countdown")
    qs = task.questions(200, seed=3)
    assert [(q.meta, q.answer) for q in qs] == [(q.meta, q.answer) for q in task.questions(200, seed=3)]
    assert [q.meta for q in qs] != [q.meta for q in task.questions(200, seed=4)]
    for q in qs:
        assert 1 <= q.meta["target"] <= 100 and len(q.meta["numbers"]) == 4
        assert ", ".join(map(str, q.meta["numbers"])) in q.prompt and str(q.meta["target"]) in q.prompt
        assert task.verify(q, f"Let me try.\nAnswer: {q.answer}")
        assert task.verify(q, f"so {q.answer} = {q.meta['target']}")  # no Answer line: last expression
        assert not task.verify(q, f"Answer: {q.answer} + 1")
    assert {op for q in qs for op in "+-*/" if op in q.answer} == set("+-*/")


@pytest.mark.parametrize(
    "text, ok",
    [
        ("Answer: (3 + 5) * 2", True),
        ("Answer: (3 + 5) * 2 = 16.", True),
        ("Answer: 16 = (3+5)*2", True),
        ("Answer: (3 × 5) + 1", True),
        ("Answer: $\\left(3 + 5\\right) \\times 2$", True),
        ("Answer: 2 * 8", False),  # 8 is not one of the numbers
        ("Answer: (5 + 5) + 6", False),  # 5 twice, given once; 6 unknown
        ("Answer: 3 * 5 + 2 - 1", True),  # every number used once
        ("Answer: 3 * 5 + 1 + 0", False),  # 0 is not given
        ("Answer: 2 ** 4", False),  # power is not allowed
        ("Answer: __import__('os').system('true')", False),
        ("Answer: (lambda: 16)()", False),
        ("Answer: 16", False),  # a bare number is not an expression using the numbers
        ("Answer: 5 / (3 - 3) + 16", False),  # division by zero
        ("Answer: 3.0 * 5 + 1", False),  # only integers
        ("Answer: -(1 - 3 * 5) + 2", False),  # unary minus is not an operation of the game
        ("no answer", False),
    ],
)
def test_countdown_verifier(text, ok):
    assert tasks.get("countdown").verify(_cd([3, 5, 2, 1], 16), text) is ok


def test_countdown_uses_exact_fractions():
    task = tasks.get("countdown")
    assert task.verify(_cd([3, 3, 8, 8], 24), "Answer: 8 / (3 - 8 / 3)")  # 24 only in exact arithmetic
    assert task.verify(_cd([7, 2, 2], 7), "Answer: 7 / 2 * 2")
    assert not task.verify(_cd([1, 3, 3], 1), "Answer: 1 / 3 * 3 + 3")


def test_safe_evaluator_refuses_everything_but_arithmetic():
    assert expression.evaluate("(1 + 2) * 3 / 4").value == Fraction(9, 4)
    bad_inputs = ["x + 1", "1 if 1 else 2", "[1][0]", "'a' * 3", "1 < 2", "True + 1", "1e3", "abs(-1)"]
    bad_inputs += ["1 // 2", "1 % 2"]
    for bad in bad_inputs + ["9 " * 200]:
        with pytest.raises(expression.ExpressionError):
            expression.evaluate(bad)


# --------------------------------------------------------------------------- GSM8K (real file)


def test_gsm8k_reference_answers_verify_and_perturbed_ones_fail(shared_data):
    path = shared_data / "gsm8k" / "test.jsonl"
    task = tasks.get(f"gsm8k:path={path}")
    qs = task.questions()
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(qs) == len(raw) == 1319
    pairs, expected = [], []
    for q, row in zip(qs, raw, strict=True):
        assert q.answer == row["answer"].rpartition("####")[2].strip()
        assert "<<" not in q.solution and q.solution and row["question"].strip() in q.prompt
        wrong = str(answers.to_number(q.answer) + 1)
        perturbed = row["answer"].rpartition("####")[0] + "#### " + wrong
        pairs += [(q, row["answer"]), (q, f"{q.solution}\nAnswer: {q.answer}")]
        pairs += [(q, perturbed), (q, f"{q.solution}\nAnswer: {wrong}")]
        expected += [True, True, False, False]
    assert task.verify_many(pairs) == expected
    assert task.verify(qs[0], "She makes $18.00 every day.")  # last-number fallback, $ and .00
    sample = task.questions(25, seed=1)
    assert sample == task.questions(25, seed=1) and sample != task.questions(25, seed=2)
    assert tasks.get(str(path)).name == "gsm8k"  # a bare path is recognised
    assert tasks.get("gsm8k", path=str(path)).questions(3, seed=1) == task.questions(3, seed=1)


# ------------------------------------------------------------------- MATH-500 (real file, process pool)


def test_math500_solutions_verify_through_the_pool_and_wrong_answers_fail(shared_data):
    path = shared_data / "math500" / "test.jsonl"
    task = tasks.get(f"math:path={path}")
    assert len(task.questions()) == 500 and tasks.get(str(path)).name == "math"
    qs = task.questions(50, seed=0)
    assert qs == task.questions(50, seed=0) and all(q.solution and q.meta["level"] for q in qs)
    # The last \boxed{} of each solution (nested braces) is exactly the file's answer column.
    everything = task.questions()
    assert [answers.last_boxed(q.solution) for q in everything] == [q.answer for q in everything]
    right = [(q, q.solution) for q in qs]
    # Wrong: another problem's solution whose answer differs; and a plainly wrong boxed number.
    others = qs[1:] + qs[:1]
    shifted = [(q, o.solution) for q, o in zip(qs, others, strict=True) if q.answer != o.answer]
    nonsense = [(q, "So the answer is \\boxed{123456789}.") for q in qs[:10]]
    verdicts = task.verify_many(right + shifted + nonsense)
    assert verdicts[: len(right)] == [True] * len(right)
    assert verdicts[len(right):] == [False] * (len(shifted) + len(nonsense))
    assert task.final_answer("so $x = \\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert task.verify(tasks.Question("h", "", "\\frac{1}{2}"), "Thus \\boxed{0.5}")
    text = "So $x = \\boxed{\\{1, 2\\}}$.\nLet me double-check: \\boxed{3}"
    assert text[: task.answer_end(text)] == "So $x = \\boxed{\\{1, 2\\}}$.\n"
    assert task.answer_end("so \\boxed{1") is None and task.answer_end("so \\boxed{12}") is None


def test_math_pool_survives_garbage_and_is_reused():
    pool_before = mathverify._get_pool()
    out = mathverify.check_many([("2", "\\boxed{2}"), ("2", "\\boxed{" * 50), ("x^2", "")])
    assert out == [True, False, False]
    assert mathverify._get_pool() is pool_before
    mathverify.shutdown(kill=True)  # what a hung batch does; the next call starts a fresh pool
    assert mathverify.check_many([("3", "\\boxed{3}")]) == [True]
    assert mathverify._get_pool() is not pool_before


# --------------------------------------------------------------------------- user files and malformed files


def _one_line_error(exc_info, path, where):
    message = str(exc_info.value)
    assert "\n" not in message and str(path) in message and where in message, message


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    for spec in (f"gsm8k:path={missing}", f"math:path={missing}", f"file:path={missing}", str(missing)):
        with pytest.raises(DiagnoseError) as err:
            tasks.get(spec).questions()
        _one_line_error(err, missing, "no such data file")


GOOD_GSM8K = '{"question": "a", "answer": "x #### 1"}'
GOOD_MATH = '{"problem": "p", "solution": "s \\\\boxed{1}"}'


@pytest.mark.parametrize(
    "spec, lines, where, what",
    [
        ("gsm8k", [GOOD_GSM8K, "", '{"question": "b", "answer": '], "line 3", "bad JSON"),
        ("gsm8k", [GOOD_GSM8K, '{"answer": "y #### 2"}'], "line 2", "'question'"),
        ("gsm8k", [GOOD_GSM8K, '{"question": "b", "answer": "2"}'], "line 2", "####"),
        ("gsm8k", ['{"question": "a", "answer": "x #### one"}'], "line 1", "not a number"),
        ("gsm8k", ["[1, 2]"], "line 1", "JSON object"),
        ("math", [GOOD_MATH, '{"problem": "q", "solution": "none"}'], "line 2", "boxed"),
        ("math", ['{"solution": "\\\\boxed{1}"}'], "line 1", "'problem'"),
    ],
)
def test_malformed_jsonl_rows_name_file_and_line(tmp_path, spec, lines, where, what):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DiagnoseError) as err:
        tasks.get(f"{spec}:path={path}").questions()
    _one_line_error(err, path, where)
    assert what in str(err.value)


def test_math_answer_column_wins_over_solution(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"problem": "p", "solution": "no box", "answer": "7"}) + "\n")
    assert tasks.get(f"math:path={path}").questions()[0].answer == "7"


def test_csv_and_parquet_with_column_mapping(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"q": ["What is 2+2?", "What is 3*3?"], "a": ["4", "9"], "why": ["2+2=4", "3*3=9"]})
    csv_path, pq_path = tmp_path / "d.csv", tmp_path / "d.parquet"
    frame.to_csv(csv_path, index=False)
    frame.to_parquet(pq_path)
    for path in (csv_path, pq_path):
        task = tasks.get(f"file:path={path},question=q,answer=a,solution=why")
        qs = task.questions()
        assert [q.answer for q in qs] == ["4", "9"] and qs[1].solution == "3*3=9"
        assert qs[0].prompt.startswith("What is 2+2?") and "Answer:" in qs[0].prompt
        assert task.verify_many([(qs[0], "Answer: 4"), (qs[1], "Answer: 4")]) == [True, False]
    math_task = tasks.get(f"file:path={csv_path},question=q,answer=a,kind=math")
    assert "\\boxed" in math_task.questions()[0].prompt
    with pytest.raises(DiagnoseError, match="kind must be"):
        tasks.get(f"file:path={csv_path},kind=text")
    bad = tmp_path / "bad.csv"
    bad.write_text("q,a\nWhat?,4\nShort row\n")
    with pytest.raises(DiagnoseError) as err:
        tasks.get(f"file:path={bad},question=q,answer=a").questions()
    _one_line_error(err, bad, "line 3")
    with pytest.raises(DiagnoseError) as err:
        tasks.get(f"file:path={csv_path},question=question,answer=a").questions()
    _one_line_error(err, csv_path, "line 2")
    assert "'question'" in str(err.value)


def test_cli_lists_tasks():
    from typer.testing import CliRunner

    from diagnose.cli import app

    result = CliRunner().invoke(app, ["ls", "tasks"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert any(line.startswith("arithmetic") and "digits=1" in line for line in lines)
    assert any(line.startswith("gsm8k") and "path=" in line for line in lines)
