"""A tiny hand-built language model whose success probabilities Q(u, k) and V(u) are known exactly.

It speaks the Engine protocol (sample, continue_from, score), so the estimator can be validated against the
truth through the same calls it makes on a real model. Vocabulary: digit tokens "0".."D-1", a filler ".",
the prompt separator "=" and an end token. A prompt is digits followed by "="; the target is the sum of the
prompt digits mod m. The response succeeds iff the sum of its digit tokens mod m equals the target.

Next-token logits are a seeded random table keyed by (response position, last token, running digit sum mod m),
so the policy is a finite Markov chain and Q, V follow by dynamic programming over (position, last, sum).
After `horizon` response tokens only the end token is allowed. Sampling is counter-based (a splitmix64 hash
of seed, prefix, forced token and sample index), so every sample is independent of how requests are batched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import DiagnoseError
from ..objectives.base import LOG_FLOOR
from ..registry import coerce, parse_spec
from .base import Continuation, Sample, SamplingParams, Scores
from .sampling import uniforms


def _key(*parts) -> int:
    """A stable 64-bit key for a tuple of ints/floats/strings."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


# The options an `exact:key=value,...` model spec (or a keyword) may set; a value here gives the option's type
# (the defaults are __init__'s).
_OPTIONS = {"digits": 4, "modulus": 3, "horizon": 6, "seed": 0, "scale": 2.0, "eos_bias": -0.5}


def _parse_model(model: str) -> tuple[str, dict[str, str]]:
    """`exact` or `exact:seed=2,scale=1.5` (how a run names a student or an external teacher) -> options."""
    return parse_spec(str(model), "exact engine model")


class ExactTokenizer:
    """The minimal tokenizer the protocol needs: one character per token, no chat template."""

    chat_template = None

    def __init__(self, digits: int):
        self.digits = digits
        self.filler_id = digits
        self.sep_id = digits + 1
        self.eos_token_id = digits + 2
        self.pad_token_id = self.eos_token_id
        self.vocab_size = digits + 3
        self._pieces = [str(i) for i in range(digits)] + [".", "=", "</s>"]

    def __len__(self) -> int:
        return self.vocab_size

    def convert_ids_to_tokens(self, ids):
        return [self._pieces[int(i)] for i in ids]

    def decode(self, ids, skip_special_tokens: bool = False, **_) -> str:
        out = []
        for i in ids:
            i = int(i)
            if skip_special_tokens and i == self.eos_token_id:
                continue
            out.append(self._pieces[i])
        return "".join(out)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids, rest = [], text
        while rest:
            if rest.startswith("</s>"):
                ids.append(self.eos_token_id)
                rest = rest[4:]
                continue
            ch = rest[0]
            rest = rest[1:]
            if ch.isspace():
                continue
            if ch not in self._pieces:
                raise DiagnoseError(
                    f"exact tokenizer: no token for {ch!r} (digits 0-{self.digits - 1}, '.', '=')"
                )
            ids.append(self._pieces.index(ch))
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True):
        return {"input_ids": self.encode(text, add_special_tokens)}


@dataclass
class _Policy:
    """Probabilities [H+1, L, m, V] (L = last token incl. the start state) and, per target, V and Q tables."""

    probs: np.ndarray
    values: np.ndarray  # [m targets, H+1, L, m] success probability from a state
    q: np.ndarray  # [m targets, H+1, L, m, V] success probability after forcing token k in that state


class ExactEngine:
    """Engine over a finite Markov language model with exact Q and V (to validate estimators)."""

    name = "exact"
    dtype = None  # exact arithmetic (float64 tables): no rounding of its own to size
    device = "cpu"
    model = None  # no torch model: nothing to differentiate
    max_model_len = None  # every response ends within `horizon` tokens

    def __init__(
        self,
        model: str = "exact",
        *,
        digits: int = 4,
        modulus: int = 3,
        horizon: int = 6,
        seed: int = 0,
        scale: float = 2.0,
        eos_bias: float = -0.5,
        dtype: str | None = None,  # accepted for the engine protocol's loaders; the tables are float64
    ):
        model, options = _parse_model(model)
        if set(options) - set(_OPTIONS):
            raise DiagnoseError(
                f"exact engine: unknown option(s) {', '.join(sorted(set(options) - set(_OPTIONS)))} in model "
                f"{model!r} (known: {', '.join(_OPTIONS)})"
            )
        given = dict(digits=digits, modulus=modulus, horizon=horizon, seed=seed, scale=scale, eos_bias=eos_bias)
        given.update(options)  # the model spec's options win over keywords
        typed = {key: coerce("exact engine", model, key, given[key], default) for key, default in _OPTIONS.items()}
        digits, modulus, horizon, seed = typed["digits"], typed["modulus"], typed["horizon"], typed["seed"]
        scale, eos_bias = typed["scale"], typed["eos_bias"]
        if digits < 2 or digits > 10 or modulus < 2 or horizon < 1:
            raise DiagnoseError("exact engine: need 2 <= digits <= 10, modulus >= 2, horizon >= 1")
        self.model_id = f"{model}:d{digits}m{modulus}h{horizon}s{seed}x{scale}e{eos_bias}"
        self.tokenizer = ExactTokenizer(digits)
        self.vocab_size = self.tokenizer.vocab_size
        self.digits, self.modulus, self.horizon, self.seed = digits, modulus, horizon, seed
        v = self.vocab_size
        rng = np.random.default_rng(seed)
        table = rng.normal(0.0, scale, size=(horizon + 1, v + 1, modulus, v))
        table[..., self.tokenizer.eos_token_id] += eos_bias
        table[..., self.tokenizer.sep_id] = -np.inf  # "=" never appears in a response
        table[horizon] = -np.inf  # after `horizon` tokens only the end token is allowed
        table[horizon, ..., self.tokenizer.eos_token_id] = 0.0
        self._table = table
        self._value = np.zeros(v, dtype=np.int64)
        self._value[:digits] = np.arange(digits)
        self._policies: dict[tuple[float, float, int], _Policy] = {}
        self._prob_tables: dict[tuple[float, float], np.ndarray] = {}

    # ---- the model -------------------------------------------------------------------------------------

    def _probs(self, temperature: float, top_p: float) -> np.ndarray:
        key = (float(temperature), float(top_p))
        if key not in self._prob_tables:
            self._prob_tables[key] = self._make_probs(*key)
        return self._prob_tables[key]

    def _make_probs(self, temperature: float, top_p: float) -> np.ndarray:
        if temperature <= 0:
            raise DiagnoseError("exact engine: temperature must be > 0")
        z = self._table / temperature
        z = z - z.max(-1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(-1, keepdims=True)
        if top_p < 1.0:  # nucleus: keep the smallest top set whose mass reaches top_p
            order = np.argsort(-p, axis=-1, kind="stable")
            sorted_p = np.take_along_axis(p, order, -1)
            keep_sorted = (np.cumsum(sorted_p, -1) - sorted_p) < top_p
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, -1)
            p = np.where(keep, p, 0.0)
            p /= p.sum(-1, keepdims=True)
        return p

    def policy(self, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int | None = None) -> _Policy:
        """The sampling policy and its exact value tables (memoised per temperature, top_p and length limit).

        `max_new_tokens` = M is the total response length limit: a response cut at M tokens is judged as it
        stands (as the engine's own sampling and the verifier do). None: no limit (the horizon ends every
        response by token H + 1). Tables are indexed by the response position t = 0 .. T - 1, T = min(M, H + 1).
        """
        limit = self.horizon + 1 if max_new_tokens is None else min(int(max_new_tokens), self.horizon + 1)
        if limit < 1:
            raise DiagnoseError("exact engine: max_new_tokens must be >= 1")
        key = (float(temperature), float(top_p), limit)
        if key not in self._policies:
            probs = self._probs(*key[:2])
            h, m, v = self.horizon, self.modulus, self.vocab_size
            eos = self.tokenizer.eos_token_id
            n_last = v + 1
            values = np.zeros((m, limit, n_last, m))
            q = np.zeros((m, limit, n_last, m, v))
            sums = np.arange(m)
            new_s = (sums[:, None] + self._value[None, :]) % m  # [m, v]: running sum after token k
            for target in range(m):
                success = (sums == target).astype(np.float64)  # [m] by running sum
                for t in range(limit - 1, -1, -1):
                    # Q(t, last, s, k): k = eos, or the last token the limit allows (t + 1 = T), ends the
                    # response with verdict success(s'); otherwise the next state's value V(t + 1, k, s').
                    if t + 1 >= limit:
                        cont = success[new_s]
                    else:
                        cont = values[target, t + 1][np.arange(v)[None, :], new_s]  # [m, v]
                    qt = np.broadcast_to(cont, (n_last, m, v)).copy()
                    qt[..., eos] = success[None, :]
                    q[target, t] = qt
                    values[target, t] = (probs[min(t, h)] * qt).sum(-1)
            self._policies[key] = _Policy(probs=probs, values=values, q=q)
        return self._policies[key]

    def _split(self, ids: Sequence[int]) -> tuple[int, list[int]]:
        """(target, response ids) of a prompt + response sequence."""
        ids = [int(i) for i in ids]
        if self.tokenizer.sep_id not in ids:
            raise DiagnoseError("exact engine: a prompt must end with '=' (digits then '=')")
        cut = ids.index(self.tokenizer.sep_id)
        prompt_sum = sum(int(self._value[i]) for i in ids[:cut] if i < self.digits)
        return prompt_sum % self.modulus, ids[cut + 1 :]

    def _state(self, response: Sequence[int]) -> tuple[int, int, int]:
        """(position clamped to the horizon, last token index (V = start), running sum mod m)."""
        t = min(len(response), self.horizon)
        last = int(response[-1]) if response else self.vocab_size
        s = int(sum(int(self._value[i]) for i in response)) % self.modulus
        return t, last, s

    def target(self, prompt_ids: Sequence[int]) -> int:
        """The residue a response's digit sum must hit for this prompt."""
        return self._split(prompt_ids)[0]

    def exact_values(
        self,
        prefix: Sequence[int],
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
    ):
        """Exact (Q [V] over every token, V) at node `prefix` = prompt + response so far (float64).

        Q is the success probability of the policy that produced the response: the same temperature, top_p
        and total response length limit `max_new_tokens` (None: no limit). No stop strings.
        """
        target, response = self._split(prefix)
        pol = self.policy(temperature, top_p, max_new_tokens)
        t = len(response)
        if t >= pol.values.shape[1]:
            raise DiagnoseError(f"exact engine: no node at response position {t} under this length limit")
        _, last, s = self._state(response)
        return (
            torch.from_numpy(pol.q[target, t, last, s].copy()),
            float(pol.values[target, t, last, s]),
        )

    def exact_q(
        self,
        prefix: Sequence[int],
        token: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
    ) -> float:
        """Exact Q(u, k): success probability after forcing `token` at node `prefix`."""
        return float(self.exact_values(prefix, temperature, top_p, max_new_tokens)[0][int(token)])

    def success(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> bool:
        """The task's verdict on a response given as token ids."""
        target, _ = self._split(list(prompt_ids))
        digits = sum(int(self._value[i]) for i in response_ids if int(i) < self.digits)
        return digits % self.modulus == target

    def verifier(self, prompt_ids: Sequence[int]):
        """verify(response text) -> bool for one prompt (text as decoded with skip_special_tokens=True)."""
        target, _ = self._split(list(prompt_ids))
        digits, m = self.digits, self.modulus

        def verify(text: str) -> bool:
            total = sum(int(ch) for ch in text if ch.isdigit() and int(ch) < digits)
            return total % m == target

        return verify

    def prompt(self, text: str) -> list[int]:
        """Token ids of a prompt such as "21=" (the '=' is appended when missing)."""
        ids = self.tokenizer.encode(text)
        return ids if ids and ids[-1] == self.tokenizer.sep_id else ids + [self.tokenizer.sep_id]

    # ---- the protocol ----------------------------------------------------------------------------------

    def _generate(self, prefixes, forced, keys, params: SamplingParams, limits=None) -> list[Sample]:
        """Vectorised generation: one row per (prefix, forced token or -1, 64-bit key, length limit)."""
        probs = self._probs(params.temperature, params.top_p)
        cdf = np.cumsum(probs, -1)
        cdf[..., -1] = 1.0  # the end token is last and always has mass: guards rounding
        logp = np.where(probs > 0, np.log(np.where(probs > 0, probs, 1.0)), LOG_FLOOR)
        n = len(prefixes)
        states = [self._state(self._split(p)[1]) for p in prefixes]
        start_len = np.array([len(self._split(p)[1]) for p in prefixes], dtype=np.int64)
        last = np.array([st[1] for st in states], dtype=np.int64)
        s = np.array([st[2] for st in states], dtype=np.int64)
        keys = np.asarray(keys, dtype=np.uint64)
        forced = np.asarray(forced, dtype=np.int64)
        eos = self.tokenizer.eos_token_id
        max_new = params.max_new_tokens
        limits = np.full(n, max_new, dtype=np.int64) if limits is None else np.minimum(limits, max_new)
        out_tok = np.full((n, max_new), -1, dtype=np.int64)
        out_lp = np.zeros((n, max_new))
        alive = np.ones(n, dtype=bool)
        lengths = np.zeros(n, dtype=np.int64)
        for step in range(max_new):
            if not alive.any():
                break
            tt = np.minimum(start_len + step, self.horizon)
            u = uniforms(keys, step)
            row_cdf = cdf[tt, last, s]
            tok = (u[:, None] > row_cdf).sum(-1)
            if step == 0:
                tok = np.where(forced >= 0, forced, tok)
            lp = logp[tt, last, s, tok]
            out_tok[alive, step] = tok[alive]
            out_lp[alive, step] = lp[alive]
            lengths += alive
            s = (s + self._value[tok]) % self.modulus
            last = tok
            alive &= (tok != eos) & (lengths < limits)
        samples = []
        for i in range(n):
            ids = out_tok[i, : lengths[i]].tolist()
            lps = out_lp[i, : lengths[i]].tolist()
            finish = "stop" if ids and ids[-1] == eos else "length"
            if params.stop:
                ids, lps, finish = self._apply_stop(ids, lps, params.stop, finish)
            samples.append(
                Sample(
                    token_ids=ids,
                    logprobs=lps,
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    finish_reason=finish,
                )
            )
        return samples

    def _apply_stop(self, ids, lps, stops, finish):
        """Cut at the first token whose decoded text contains a stop string (as halting there would)."""
        for j in range(1, len(ids) + 1):
            text = self.tokenizer.decode(ids[:j], skip_special_tokens=True)
            if any(st in text for st in stops):
                return ids[:j], lps[:j], "stop"
        return ids, lps, finish

    def sample(self, prompts: Sequence[Sequence[int]], n: int, params: SamplingParams) -> list[list[Sample]]:
        flat, keys = [], []
        for prompt in prompts:
            base = _key("sample", params.seed, tuple(int(i) for i in prompt))
            for j in range(n):
                flat.append(list(prompt))
                keys.append(_key(base, j))
        out = self._generate(flat, [-1] * len(flat), keys, params) if flat else []
        return [out[i * n : (i + 1) * n] for i in range(len(prompts))]

    def continue_from(
        self, requests: Sequence[Continuation], m: int, params: SamplingParams
    ) -> list[list[Sample]]:
        flat, forced, keys, limits = [], [], [], []
        for req in requests:
            base = _key("continue", params.seed, tuple(int(i) for i in req.prefix), int(req.token))
            for j in range(m):
                flat.append(list(req.prefix))
                forced.append(int(req.token))
                keys.append(_key(base, j))
                limits.append(params.max_new_tokens if req.max_new_tokens is None else int(req.max_new_tokens))
        out = self._generate(flat, forced, keys, params, np.asarray(limits, dtype=np.int64)) if flat else []
        return [out[i * m : (i + 1) * m] for i in range(len(requests))]

    def score(
        self,
        sequences: Sequence[Sequence[int]],
        positions: Sequence[Sequence[int]],
        topk: int | None = None,
        token_ids: Sequence[Sequence[Sequence[int]]] | None = None,
    ) -> list[Scores]:
        """Raw (temperature 1) logits; prompt positions get uniform logits over the digits and '='."""
        out = []
        for i, (seq, pos) in enumerate(zip(sequences, positions, strict=False)):
            seq = [int(x) for x in seq]
            cut = seq.index(self.tokenizer.sep_id) if self.tokenizer.sep_id in seq else len(seq)
            rows = []
            for p in pos:
                if p <= cut:
                    row = np.full(self.vocab_size, -np.inf)
                    row[: self.digits] = 0.0
                    row[self.tokenizer.sep_id] = 0.0
                else:
                    t, last, s = self._state(seq[cut + 1 : p])
                    row = self._table[t, last, s]
                rows.append(row)
            logits = torch.tensor(np.array(rows), dtype=torch.float32).reshape(len(pos), self.vocab_size)
            sc = Scores(positions=list(pos))
            logp = torch.log_softmax(logits, -1).clamp_min(LOG_FLOOR)
            if topk is None:
                sc.logits = logits
            else:
                k = min(int(topk), self.vocab_size)
                vals, idx = logp.topk(k, -1)
                sc.topk_ids, sc.topk_logprobs = idx, vals
            if token_ids is not None:
                req = token_ids[i]
                width = max((len(r) for r in req), default=0)
                tl = torch.full((len(pos), width), float(LOG_FLOOR))
                for j, ids in enumerate(req):
                    if ids:
                        tl[j, : len(ids)] = logp[j, torch.tensor(ids, dtype=torch.long)]
                sc.token_logprobs = tl
            out.append(sc)
        return out
