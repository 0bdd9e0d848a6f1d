"""Summaries of reference solutions for the `summary` context: read from the data, or written once per
question by a model (the student by default) and cached on disk, keyed by model and solution text."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import atomic
from ..engines.base import SamplingParams, render_prompt

PROMPT = (
    "Summarize the key idea of the following solution in one short sentence, without the final answer's "
    "working.\n\nSolution:\n{solution}"
)


def _key(model_id: str, solution: str) -> str:
    return hashlib.sha256(f"{model_id}\0{solution}".encode()).hexdigest()[:32]


def summarize(engine, solutions: list[str], cache_dir: Path, seed: int = 0, max_new_tokens: int = 64) -> list[str]:
    """One summary per solution: cached ones are reused; missing ones are generated in one engine call."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    model_id = str(engine.model_id)
    out: list[str | None] = []
    todo = []
    for i, sol in enumerate(solutions):
        path = cache_dir / f"{_key(model_id, sol)}.json"
        if path.exists():
            out.append(json.loads(path.read_text())["summary"])
        else:
            out.append(None)
            todo.append(i)
    if todo:
        prompts = [render_prompt(engine.tokenizer, PROMPT.format(solution=solutions[i])) for i in todo]
        params = SamplingParams(temperature=0.7, max_new_tokens=max_new_tokens, stop=("\n",), seed=seed)
        samples = engine.sample(prompts, 1, params)
        for i, group in zip(todo, samples, strict=False):
            text = engine.tokenizer.decode(group[0].token_ids, skip_special_tokens=True).strip()
            text = text or solutions[i].strip().splitlines()[0]
            out[i] = text
            path = cache_dir / f"{_key(model_id, solutions[i])}.json"
            atomic.write_text(path, json.dumps({"model": model_id, "summary": text}))
    return [s or "" for s in out]
