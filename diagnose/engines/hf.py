"""The transformers engine: batched left-padded sampling with our own decode loop, one KV cache per
distinct prefix expanded across all its continuations, and full-vocabulary scoring in position chunks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import DiagnoseError
from ..models import load_error, locate_model
from .base import Continuation, Sample, SamplingParams, Scores
from .hidden_cache import HiddenCache, pick
from .sampling import StopChecker, draw, processed_logprobs, request_key, sample_key


@dataclass
class _Job:
    """One generated row: its prefix, the forced first token (None: sample it), and its 64-bit sampling key
    (from seed, prefix, forced token and sample index: its draws do not depend on the rest of the batch)."""

    prefix: tuple[int, ...]
    forced: int | None
    key: int
    limit: int | None = None  # this row's length limit (None: params.max_new_tokens)


def _dtype(dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return getattr(torch, str(dtype))
    except AttributeError:
        raise DiagnoseError(f"unknown dtype {dtype!r}") from None


@torch.inference_mode()
def splits_head(model) -> bool:
    """Can logits be computed as output_embeddings(decoder(ids).last_hidden_state)? (Then scoring, and validate's
    trainable student, apply the vocabulary projection only at the (row, position) pairs asked for, not at every
    position any row asks for.) Checked once on a few tokens; models that post-process logits (soft-capping,
    scaling) fail the check and keep the plain path."""
    decoder = getattr(model, "get_decoder", lambda: None)()
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if decoder is None or head is None:
        return False
    device = next(model.parameters()).device
    ids = torch.tensor([[1, 2, 3, 4]], device=device) % int(head.weight.shape[0])
    try:
        full = model(input_ids=ids).logits.float()
        split = head(decoder(input_ids=ids).last_hidden_state).float()
    except Exception:  # noqa: BLE001 - any mismatch in calling convention: keep the plain path
        return False
    return full.shape == split.shape and torch.allclose(full, split, atol=1e-3, rtol=1e-3)


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends a generation: the tokenizer's end of sequence and the model's generation config's."""
    ids: set[int] = set()
    for src in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(int(i) for i in src)
    return ids


def pad_token_id(tokenizer, eos_ids: set[int]) -> int:
    """The id right padding fills with: the tokenizer's pad token, else the smallest end-of-sequence id."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return next(iter(sorted(eos_ids)), 0)


class HFEngine:
    """Engine protocol on a transformers causal LM.

    batch_size: rows decoded together; score_chunk: positions per forward pass when scoring (memory stays
    bounded by batch rows x score_chunk x vocabulary whatever the sequence length).
    """

    name = "hf"

    def __init__(
        self,
        model: str = "embedded",
        dtype: str | torch.dtype = "auto",
        device: str | None = None,
        batch_size: int | None = None,
        score_chunk: int = 256,
        attn_implementation: str = "sdpa",
        score_cache_mb: int = 512,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_id = model
        path = locate_model(model)  # a model that cannot be found: one DiagnoseError line
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = _dtype(dtype, self.device)
        # Rows decoded together. CPU decoding is bound by arithmetic on the weights: 128 rows gave 1.3x the
        # tokens/s of 64 on a 2-core machine; on a GPU 64 keeps the KV cache of long generations in memory.
        self.batch_size = int(batch_size or (64 if self.device.startswith("cuda") else 128))
        self.score_chunk = int(score_chunk)
        self.min_stem = 16  # prefixes sharing this many leading tokens share their prefill (see _prefill)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(
                path, dtype=self.dtype, attn_implementation=attn_implementation
            ).to(self.device)
        except (OSError, ValueError) as err:  # missing or unreadable files: one error line, not a traceback
            raise load_error(model, err) from None
        self.model.eval()
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        # the longest sequence the model was trained for (prompts plus generations are checked against it)
        self.max_model_len = getattr(self.model.config, "max_position_embeddings", None)
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.split_head = splits_head(self.model)
        self.pad_id = pad_token_id(self.tokenizer, self.eos_ids)
        # Sequences scored before are rescored from their kept hidden states (the estimator scores each rollout
        # once per selection pass, under the student and each teacher context): 0 turns it off.
        self.score_cache = HiddenCache(score_cache_mb * 2**20) if score_cache_mb > 0 and self.split_head else None

    # ---------------------------------------------------------------- protocol

    def sample(self, prompts: Sequence[Sequence[int]], n: int, params: SamplingParams) -> list[list[Sample]]:
        """n samples per prompt; each prompt's KV cache is computed once and shared by its n rows.

        Sample j of a prompt draws from its own counter-based stream, keyed by (seed, prompt, -1, j).
        """
        jobs = []
        for p in prompts:
            prefix = tuple(int(t) for t in p)
            base = request_key(params.seed, prefix, -1)
            jobs.extend(_Job(prefix, None, sample_key(base, j)) for j in range(n))
        flat = self._run(jobs, params)
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    def continue_from(
        self, requests: Sequence[Continuation], m: int, params: SamplingParams
    ) -> list[list[Sample]]:
        """m continuations per (prefix, forced token); each prefix's KV cache is computed once.

        Continuation j of a request draws from its own stream, keyed by (seed, prefix, token, j).
        """
        jobs = []
        for r in requests:
            prefix, token = tuple(int(t) for t in r.prefix), int(r.token)
            base = request_key(params.seed, prefix, token)
            limit = None if r.max_new_tokens is None else int(r.max_new_tokens)
            jobs.extend(_Job(prefix, token, sample_key(base, j), limit) for j in range(m))
        flat = self._run(jobs, params)
        return [flat[i * m : (i + 1) * m] for i in range(len(requests))]

    @torch.inference_mode()
    def score(
        self,
        sequences: Sequence[Sequence[int]],
        positions: Sequence[Sequence[int]],
        topk: int | None = None,
        token_ids: Sequence[Sequence[Sequence[int]]] | None = None,
    ) -> list[Scores]:
        """Next-token distributions at `positions` (t: the token at index t given ids[:t], 1 <= t <= len).

        Full logits (float32, [P, V]) when topk is None, else top-k log-probs; `token_logprobs` [P, R] holds
        the log-probs of token_ids[i][j] (ragged lists padded with NaN).
        """
        if len(positions) != len(sequences):
            raise DiagnoseError("score: one list of positions per sequence is required")
        seqs = [[int(t) for t in s] for s in sequences]
        for s, pos in zip(seqs, positions, strict=False):
            if any(not 1 <= int(p) <= len(s) for p in pos):
                raise DiagnoseError(f"score: positions must lie in 1..{len(s)} (sequence length)")
        logits = self._logits_remembered(seqs, positions) if self.score_cache is not None else None
        if logits is None:
            logits = [None] * len(seqs)
            # Lexicographic order puts sequences that share a stem (one prompt or teacher context) in one batch.
            order = sorted(range(len(seqs)), key=lambda i: seqs[i])
            rows = min(self.batch_size, 64)  # scoring keeps full logits at the positions asked for: fewer rows
            for start in range(0, len(order), rows):
                batch = order[start : start + rows]
                got = self._logits_at([seqs[i] for i in batch], [[int(p) for p in positions[i]] for i in batch])
                for i, z in zip(batch, got, strict=False):
                    logits[i] = z
        return [
            make_scores([int(p) for p in positions[i]], logits[i], topk, ids)
            for i, ids in enumerate(token_ids if token_ids is not None else [None] * len(seqs))
        ]

    # ---------------------------------------------------------------- scoring

    @torch.inference_mode()
    def _logits_remembered(self, seqs: list[list[int]], positions) -> list[torch.Tensor] | None:
        """Logits at the positions from the final hidden states of each whole sequence: kept ones where the
        sequence was scored before (`score_cache`), else computed for every token of it (stems shared, as in
        `_logits_stemmed`) and kept. New sequences run whole, so at most 64 x score_chunk tokens go into one
        forward pass (fewer rows for long ones); None (use the chunked path) when one alone is longer than 16
        scoring chunks."""
        cache = self.score_cache
        cache.sync(self.model)  # weights changed in place (validate's training): nothing kept holds
        keys = [tuple(s) for s in seqs]
        first: dict[tuple[int, ...], int] = {}  # sequence -> the earliest position asked for it
        for k, pos in zip(keys, positions, strict=True):
            if pos and not cache.covers(k, pos):
                first[k] = min(first.get(k, len(k)), min(int(t) for t in pos))
        todo = sorted(first)
        if todo and max(map(len, todo)) > 16 * self.score_chunk:
            return None
        wanting: dict[tuple[int, ...], list[int]] = {}  # a new sequence -> the requests that ask for it
        for i, k in enumerate(keys):
            if k in first:
                wanting.setdefault(k, []).append(i)
        picked: list[torch.Tensor | None] = [None] * len(keys)  # per request: hidden rows at its positions
        start, tokens = 0, 64 * max(1, self.score_chunk)  # tokens per forward pass: the chunked path's bound
        while start < len(todo):
            rows = max(1, min(self.batch_size, 64, tokens // max(len(k) for k in todo[start : start + 64])))
            batch = todo[start : start + rows]
            start += rows
            # only the rows asked for leave the batch (and what the bounded cache keeps): memory stays bounded
            for k, (offset, hidden) in zip(batch, self._hidden([first[k] - 1 for k in batch], batch), strict=True):
                for i in wanting[k]:
                    picked[i] = pick(offset, hidden, positions[i])
                cache.put(k, offset, hidden)
        cache.misses += len(todo)
        cache.hits += sum(1 for k, pos in zip(keys, positions, strict=True) if pos and k not in first)
        for i, (k, pos) in enumerate(zip(keys, positions, strict=True)):
            if pos and picked[i] is None:
                picked[i] = cache.rows(k, pos)
        head = self.model.get_output_embeddings()
        flat = [h for h in picked if h is not None]
        rows_at_once = 256  # [rows, V] logits at a time on the device
        z = (
            torch.cat([head(c).float().cpu() for c in torch.cat(flat).split(rows_at_once)]) if flat else None
        )
        out, at = [], 0
        for pos in positions:
            out.append(z[at : at + len(pos)] if pos else torch.empty(0, self.vocab_size))
            at += len(pos)
        return out

    def _hidden(self, caps: list[int], rows: list[tuple[int, ...]]) -> list[tuple[int, torch.Tensor]]:
        """(offset, final hidden states of tokens offset..len-1) of each (lexicographically sorted) row; rows
        sharing a stem of at most caps[i] tokens run it once and keep their own tokens after it."""
        stems, owner = _stems(rows, self.min_stem, caps)
        if len(rows) > 1 and len(stems) < len(rows) and min(n for _, n in stems) >= 1:
            kv, mask, _ = self._forward_rows([p for p, _ in stems])
            index = torch.tensor(owner, device=self.device)
            offsets = [stems[o][1] for o in owner]
            tails = [r[n:] for r, n in zip(rows, offsets, strict=True)]
            _, _, h = self._forward_rows(tails, _select_rows(kv, index), mask.index_select(0, index), hidden=True)
        else:
            offsets, tails = [0] * len(rows), list(rows)
            _, _, h = self._forward_rows(tails, hidden=True)
        width = h.shape[1]
        return [(n, h[k, width - len(t) :].clone()) for k, (n, t) in enumerate(zip(offsets, tails, strict=True))]

    def _logits_at(self, seqs: list[list[int]], positions: list[list[int]]) -> list[torch.Tensor]:
        """Full float32 logits at the positions of each sequence, running the batch in position chunks
        with a KV cache, stopping after the last position asked for."""
        from transformers import DynamicCache

        rows = len(seqs)
        need = max((max(p, default=0) for p in positions), default=0)
        if need == 0:
            return [torch.empty(0, self.vocab_size) for _ in seqs]
        if rows > 1 and all(positions):
            shared = self._logits_stemmed(seqs, positions)
            if shared is not None:
                return shared
        length = min(max(len(s) for s in seqs), need)  # the token at index t-1 gives position t
        ids = torch.full((rows, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, length), dtype=torch.long)
        for r, s in enumerate(seqs):
            k = min(len(s), length)
            ids[r, :k] = torch.tensor(s[:k])
            mask[r, :k] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        out = [torch.empty(len(p), self.vocab_size) for p in positions]
        # (row, output index t-1) -> rows of `out` that want it
        wanted: dict[int, list[tuple[int, int, int]]] = {}
        for r, pos in enumerate(positions):
            for j, t in enumerate(pos):
                wanted.setdefault(t - 1, []).append((r, j, t))
        cache = DynamicCache()
        chunk = max(1, self.score_chunk)
        for begin in range(0, length, chunk):
            end = min(length, begin + chunk)
            keep = sorted(i for i in wanted if begin <= i < end)
            result = self.model(
                input_ids=ids[:, begin:end],
                attention_mask=mask[:, :end],
                position_ids=torch.arange(begin, end, device=self.device).expand(rows, -1),
                past_key_values=cache,
                use_cache=end < length,
                logits_to_keep=torch.tensor([i - begin for i in keep], dtype=torch.long, device=self.device),
            )
            z = result.logits.float().cpu()
            for col, i in enumerate(keep):
                for r, j, _ in wanted[i]:
                    out[r][j] = z[r, col]
        return out

    # ---------------------------------------------------------------- generation

    def _run(self, jobs: list[_Job], params: SamplingParams) -> list[Sample]:
        """Generate every job; jobs sharing a prefix share one prefill (batched over distinct prefixes)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, job in enumerate(jobs):
            if not job.prefix:
                raise DiagnoseError("generation needs a non-empty prefix (at least a BOS or prompt token)")
            groups.setdefault(job.prefix, []).append(i)
        # Lexicographic order keeps the prefixes of one prompt (and of one rollout) in the same prefill unit,
        # where they share the prefill of their common stem (`_prefill`).
        prefixes = sorted(groups)
        stopper = StopChecker(self.tokenizer, params.stop, self.eos_ids)
        results: list[Sample | None] = [None] * len(jobs)
        # Pack whole prefix groups into prefill units of about batch_size rows; a group larger than a batch
        # is prefilled once and its rows decoded in several slices of the same cache.
        unit: list[tuple[int, ...]] = []
        unit_rows = 0
        for k, prefix in enumerate(prefixes):
            unit.append(prefix)
            unit_rows += len(groups[prefix])
            if unit_rows >= self.batch_size or k == len(prefixes) - 1:
                self._run_unit(unit, groups, jobs, params, stopper, results)
                unit, unit_rows = [], 0
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _run_unit(self, unit, groups, jobs, params, stopper, results) -> None:
        cache, mask, last_logits = self._prefill(list(unit))
        rows = [(g, i) for g, prefix in enumerate(unit) for i in groups[prefix]]
        for start in range(0, len(rows), self.batch_size):
            part = rows[start : start + self.batch_size]
            self._decode(part, cache, mask, last_logits, jobs, params, stopper, results)

    def _prefill(self, prefixes: list[tuple[int, ...]]):
        """Forward pass over the distinct prefixes: their KV cache, attention mask and last logits.

        Prefixes that share a stem (a common start of at least `min_stem` tokens: the prompt, a rollout's
        head) share its computation: the stems run once (left-padded), their cache rows are expanded to the
        prefixes, and each prefix's own tail runs on top (left-padded after the stem, so the padding sits in
        the middle of a row; the mask hides it and positions count real tokens only).
        """
        stems, owner = _stems(prefixes, self.min_stem)
        if len(stems) == len(prefixes) or min(n for _, n in stems) < 1:  # nothing shared: one pass
            return self._forward_rows(list(prefixes))
        cache, mask, _ = self._forward_rows([p for p, _ in stems])
        index = torch.tensor(owner, device=self.device)
        tails = [p[stems[owner[i]][1]:] for i, p in enumerate(prefixes)]
        return self._forward_rows(tails, _select_rows(cache, index), mask.index_select(0, index))

    def _forward_rows(self, rows: list[tuple[int, ...]], cache=None, mask=None, keep=None, hidden=False):
        """Run left-padded token rows (after `cache`/`mask`, if given): the extended cache, mask, and the
        last logits (or, with `keep` = [(row, column)], the float32 logits [len(keep), V] there, on the CPU;
        with `hidden`, the final hidden states [rows, width, H] on the device)."""
        from transformers import DynamicCache

        width = max(len(p) for p in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        new = torch.zeros((len(rows), width), dtype=torch.long)
        for r, p in enumerate(rows):
            ids[r, width - len(p) :] = torch.tensor(p)
            new[r, width - len(p) :] = 1
        ids, new = ids.to(self.device), new.to(self.device)
        before = mask.sum(-1, keepdim=True) if mask is not None else 0
        full = new if mask is None else torch.cat([mask, new], dim=-1)
        inputs = dict(
            input_ids=ids,
            attention_mask=full,
            position_ids=(before + new.cumsum(-1) - 1).clamp(min=0),
            past_key_values=cache if cache is not None else DynamicCache(),
            use_cache=keep is None and not hidden,
        )
        if hidden:
            return None, full, self.model.get_decoder()(**inputs).last_hidden_state
        if keep is None:
            out = self.model(**inputs, logits_to_keep=1)
            return out.past_key_values, full, out.logits[:, -1].float()
        r = torch.tensor([a for a, _ in keep], device=self.device)
        c = torch.tensor([b for _, b in keep], device=self.device)
        if self.split_head:  # the vocabulary projection only where asked
            h = self.model.get_decoder()(**inputs).last_hidden_state[r, c]
            return None, full, self.model.get_output_embeddings()(h).float().cpu()
        cols = sorted(set(c.tolist()))
        z = self.model(**inputs, logits_to_keep=torch.tensor(cols, device=self.device)).logits
        at = torch.tensor([cols.index(b) for _, b in keep], device=self.device)
        return None, full, z[r, at].float().cpu()

    def _logits_stemmed(self, seqs, positions) -> list[torch.Tensor] | None:
        """`_logits_at` for sequences that share stems (a question's rollouts under one context): each stem
        runs once, then every row's tail up to its last position runs on top of its stem's cache. None when
        nothing is shared or a tail is longer than a scoring chunk (then the plain path is used)."""
        rows = [tuple(s[: max(p)]) for s, p in zip(seqs, positions, strict=True)]
        order = sorted(range(len(rows)), key=lambda i: rows[i])
        caps = [min(positions[i]) - 1 for i in order]  # every asked position must lie in the row's tail
        stems, owner = _stems([rows[i] for i in order], self.min_stem, caps)
        lengths = [stems[o][1] for o in owner]
        tails = [rows[i][n:] for i, n in zip(order, lengths, strict=True)]
        if len(stems) == len(rows) or min(n for _, n in stems) < 1 or max(map(len, tails)) > self.score_chunk:
            return None
        cache, mask, _ = self._forward_rows([p for p, _ in stems])
        index = torch.tensor(owner, device=self.device)
        width = max(map(len, tails))
        cols = {
            k: [width - len(tails[k]) + (t - 1 - lengths[k]) for t in positions[i]] for k, i in enumerate(order)
        }
        keep = [(k, c) for k in range(len(order)) for c in cols[k]]
        _, _, z = self._forward_rows(tails, _select_rows(cache, index), mask.index_select(0, index), keep)
        out: list[torch.Tensor | None] = [None] * len(rows)
        at = 0
        for k, i in enumerate(order):
            out[i] = z[at : at + len(cols[k])]
            at += len(cols[k])
        return out

    def _decode(self, part, prefill_cache, prefill_mask, prefill_logits, jobs, params, stopper, results):
        """Decode one slice of rows from an expanded copy of the prefill cache until every row stops.

        Finished rows are dropped from the cache once a quarter of the rows have finished (a cache copy);
        until then they ride along and their draws are ignored. The token at generation index t of a row
        is drawn with the uniform of (row key, t), whatever rows share the batch.
        """
        group_of = [g for g, _ in part]
        job_ids = [i for _, i in part]
        keys = [jobs[i].key for i in job_ids]
        logp = processed_logprobs(
            prefill_logits.index_select(0, torch.tensor(group_of, device=self.device)),
            params.temperature,
            params.top_p,
        )
        sampled, sampled_lp = draw(logp, keys, 0)
        tokens: list[list[int]] = []
        lps: list[list[float]] = []
        reason: dict[int, str] = {}
        limits = [
            params.max_new_tokens if jobs[i].limit is None else min(jobs[i].limit, params.max_new_tokens)
            for i in job_ids
        ]
        for r, i in enumerate(job_ids):
            f = jobs[i].forced
            tokens.append([int(sampled[r]) if f is None else f])
            lps.append([float(sampled_lp[r]) if f is None else float(logp[r, f])])
            if stopper.hit(tokens[r]):
                reason[r] = "stop"
            elif limits[r] <= 1:
                reason[r] = "length"
        rows = [r for r in range(len(part)) if r not in reason]  # part index of each cache row
        if rows:
            index = torch.tensor([group_of[r] for r in rows], device=self.device)
            cache = _select_rows(prefill_cache, index)
            mask = prefill_mask.index_select(0, index)
            lengths = mask.sum(-1)
        live = [True] * len(rows)
        step = 1
        while rows:
            last = torch.tensor([tokens[r][-1] for r in rows], device=self.device).unsqueeze(-1)
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
            out = self.model(
                input_ids=last,
                attention_mask=mask,
                position_ids=lengths.unsqueeze(-1),
                past_key_values=cache,
                use_cache=True,
            )
            cache, lengths, step = out.past_key_values, lengths + 1, step + 1
            # every row in the cache is at generation index step - 1 (all rows start together)
            logp = processed_logprobs(out.logits[:, -1], params.temperature, params.top_p)
            ids, lp = draw(logp, [keys[r] for r in rows], step - 1)
            for c, r in enumerate(rows):
                if not live[c]:
                    continue
                tokens[r].append(int(ids[c]))
                lps[r].append(float(lp[c]))
                if stopper.hit(tokens[r]):
                    reason[r], live[c] = "stop", False
                elif step >= limits[r]:
                    reason[r], live[c] = "length", False
            dead = live.count(False)
            if dead == len(rows):
                break
            if dead and dead >= len(rows) / 4:
                keep = [c for c in range(len(rows)) if live[c]]
                index = torch.tensor(keep, device=self.device)
                cache = _select_rows(cache, index)
                mask, lengths = mask.index_select(0, index), lengths.index_select(0, index)
                rows, live = [rows[c] for c in keep], [True] * len(keep)
        for r, i in enumerate(job_ids):
            results[i] = Sample(
                token_ids=tokens[r], logprobs=lps[r], text=stopper.text(tokens[r]), finish_reason=reason[r]
            )


def _stems(
    prefixes: list[tuple[int, ...]], min_stem: int, caps: list[int] | None = None
) -> tuple[list[tuple[tuple[int, ...], int]], list[int]]:
    """Groups of lexicographically sorted prefixes that share at least `min_stem` leading tokens (greedy: a
    prefix joins the current group while that costs less computation than a stem of its own).

    Returns the stems as (tokens, length) and each prefix's stem index. A stem leaves each of its prefixes
    at least one token of their own (the last token's logits are what the prefill is for), and at most
    caps[i] tokens go into prefix i's stem (default len - 1)."""
    stems: list[tuple[tuple[int, ...], int]] = []
    owner: list[int] = []
    first, length, members = None, 0, 0
    for i, p in enumerate(prefixes):
        cap = min(len(p) - 1, caps[i]) if caps is not None else len(p) - 1
        if first is not None:
            shared = min(length, _common(first, p), cap)
            # Join when it saves work: the stem shrinks by (length - shared) tokens for every member so far,
            # and p saves `shared` tokens (a chat template's system prompt alone is not worth a shorter stem).
            if shared >= min_stem and (length - shared) * members < shared:
                length, members = shared, members + 1
                stems[-1] = (first[:length], length)
                owner.append(len(stems) - 1)
                continue
        first, length, members = p, cap, 1
        stems.append((p[:length], length))
        owner.append(len(stems) - 1)
    return stems, owner


def _common(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _select_rows(cache, index: torch.Tensor):
    """A new cache holding rows `index` (repeats allowed) of `cache`."""
    from transformers import DynamicCache

    new = DynamicCache()
    for layer, item in enumerate(_layers(cache)):
        k, v = item
        new.update(k.index_select(0, index), v.index_select(0, index), layer)
    return new


def _layers(cache):
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=False))


def make_scores(positions: list[int], logits: torch.Tensor, topk: int | None, ids) -> Scores:
    """Scores from full logits: kept as is, or reduced to top-k log-probs; plus requested ids' log-probs."""
    scores = Scores(positions=positions)
    logp = None
    if topk is None:
        scores.logits = logits
    else:
        logp = torch.log_softmax(logits, dim=-1)
        vals, idx = logp.topk(min(int(topk), logp.shape[-1]), dim=-1)
        scores.topk_ids, scores.topk_logprobs = idx, vals
    if ids is not None:
        logp = torch.log_softmax(logits, dim=-1) if logp is None else logp
        width = max((len(x) for x in ids), default=0)
        out = torch.full((len(positions), width), float("nan"))
        for j, row in enumerate(ids):
            if row:
                out[j, : len(row)] = logp[j, torch.tensor([int(t) for t in row])]
        scores.token_logprobs = out
    return scores
