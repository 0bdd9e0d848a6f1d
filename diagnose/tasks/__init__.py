"""Tasks: questions with reference answers, a verifier, and where generation may stop.

    >>> from diagnose import tasks
    >>> tasks.available()                          # ['arithmetic', 'countdown', 'digitsum', 'file', ...]
    >>> task = tasks.get("arithmetic:digits=2")    # or tasks.get("arithmetic", digits=2)
    >>> qs = task.questions(n=32, seed=0)          # list[Question]; same seed -> same questions
    >>> task.verify(qs[0], completion_text)        # bool
    >>> task.verify_many([(q, text), ...])         # list[bool] (MATH: math-verify in a process pool)
    >>> task.final_answer(completion_text)         # the answer the verifier compared, for reports
    >>> task.stop, task.answer_end(partial_text)   # stop strings; offset where the verdict is fixed

Specs (`name:key=value,...`):
  arithmetic[:digits=1,ops=+*,terms=2]             generated; final "Answer: <number>"
  countdown[:count=4,max_number=20,max_target=100] generated; answer = expression reaching the target
  digitsum[:digits=4,modulus=3,length=8]           for `--engine exact` (known Q): digit sums mod modulus
  gsm8k[:path=test.jsonl]                          `question`, `answer` ending "#### <number>"
  math[:path=test.jsonl]                           `problem`, `solution` with \\boxed{}, optional `answer`
  (without path=: GSM8K test (openai/gsm8k, main) / MATH-500 (HuggingFaceH4/MATH-500) through `datasets`,
  from the hub or its local cache; neither available: one DiagnoseError line)
  file:path=x.csv,question=col,answer=col[,solution=col,id=col,kind=numeric|math]   (JSONL/CSV/Parquet)
  /path/to/data.jsonl                              same as file:path=... (columns question, answer)

`Question(id, prompt, answer, solution=None, meta={})`: `prompt` is the user message the student sees (it
asks for step-by-step reasoning and a final "Answer: <number>" line, or \\boxed{} for MATH).

Verdicts. Numeric tasks take the number on the first "Answer:" (or GSM8K "####") line, else the last number
of the text (small models rarely follow the format), and compare exactly after dropping commas, "$" and a
trailing ".0". Countdown parses the expression with `ast` (integers, + - * /, parentheses only), evaluates
it with Fractions and checks the numbers used. MATH uses math-verify. Text inside a <think> block never
counts: after the last </think>, or before an unclosed <think>.

Stopping. `stop` holds plain strings any engine can match: markers of a new turn ("\\nQuestion:", ...).
The precise rule, "stop at the newline that ends the first Answer: line" (MATH: the line of the first
complete \\boxed{}), cannot be written as plain strings; `answer_end(text)` gives that offset so an engine
can check it while decoding, and `trim(text)` cuts there. Cutting there never changes the verdict.

Add a task with `@tasks.register("name", option=default)` on a `Task` subclass.
"""

from . import files, generated  # noqa: F401  (registers the built-ins)
from .base import NEW_TURN_STOPS, Question, Task
from .registry import available, defaults, get, parse_spec, register

__all__ = ["Question", "Task", "NEW_TURN_STOPS", "available", "defaults", "get", "parse_spec", "register"]
