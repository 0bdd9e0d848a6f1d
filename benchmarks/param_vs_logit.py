"""Do parameter-space and logit-space alignment rank nodes alike? Spearman over the nodes of one rollout.

    python benchmarks/param_vs_logit.py [--nodes 24] [--params 'layers\\.29\\.|model\\.norm']

Student: the embedded SmolLM2-135M-Instruct (skips if its checkpoint is not prepared), one sampled rollout
on a multiplication question. Teacher: the same model told the answer in its system prompt, scored on the
same prefix (self-distillation). g* uses a synthetic, seeded Q on the candidates (student top-4, teacher
top-4, sampled token), since no targeted rollouts run here: the comparison is between the two geometries
for the same (g*, d) pairs, not a statement about real success. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diagnose import alignment, objectives
from diagnose.ideal import ideal_gradient
from diagnose.param_space import param_space_alignment

SPECS = ("rkl", "fkl", "jsd", "rkl_sampled")


def checkpoint() -> str | None:
    try:
        from diagnose import models

        return models.resolve_model(models.EMBEDDED)
    except Exception:
        path = Path.home() / ".cache/diagnose/models/smollm2-135m-instruct"
        return str(path) if (path / "model.safetensors").exists() else None


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = (x.double().argsort().argsort().double() for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=24)
    ap.add_argument(
        "--params", default=None, help="regex of the parameter subset (default: last block + norm)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    path = checkpoint()
    if path is None:
        print(json.dumps({"skipped": "embedded checkpoint not prepared"}))
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    last = model.config.num_hidden_layers - 1
    subset = args.params or rf"layers\.{last}\.|model\.norm"
    question = "What is 7 * 8? Answer with a number."
    student_prompt = tok.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    teacher_prompt = tok.apply_chat_template(
        [{"role": "system", "content": "The correct answer is 56."}, {"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        full = model.generate(
            student_prompt,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=args.nodes,
            pad_token_id=tok.eos_token_id,
        )
    rollout = full[0, student_prompt.shape[1] :]
    m = rollout.shape[0]
    s_len, t_len = student_prompt.shape[1], teacher_prompt.shape[1]
    pos = torch.arange(m) + s_len - 1  # logits at pos predict rollout[t]
    with torch.no_grad():
        z = model(full, use_cache=False).logits[0, pos].float()
        t_ids = torch.cat([teacher_prompt[0], rollout])[None]
        zt = model(t_ids, use_cache=False).logits[0, torch.arange(m) + t_len - 1].float()
    cand = torch.cat([z.topk(4, -1).indices, zt.topk(4, -1).indices, rollout[:, None]], 1)
    gen = torch.Generator().manual_seed(args.seed)
    q_hat = torch.rand(cand.shape, generator=gen).round(decimals=1)
    repeated = (cand[:, :, None] == cand[:, None, :]).tril(-1).any(-1)  # keep each id's first occurrence
    cand = torch.where(repeated, -1, cand)
    ideal = ideal_gradient(z, cand, q_hat)
    objs = [objectives.parse(s) for s in SPECS]
    ds = torch.stack([o.direction(z, zt, rollout).float() for o in objs], 1)  # [M, O, V]
    logit_cos = torch.stack(
        [alignment.cosines(ideal.g, ds[:, j], ideal.candidates).full for j in range(len(objs))], 1
    )
    t0 = time.perf_counter()
    out = param_space_alignment(
        model, full, torch.zeros(m, dtype=torch.long), pos, ideal.g, ds, params=subset, chunk=len(objs) + 1
    )
    elapsed = time.perf_counter() - t0
    keep = ~out.degenerate.any(1) & (ideal.g.abs().sum(-1) > 0)
    rho = {o.label: spearman(out.cos[keep, j], logit_cos[keep, j]) for j, o in enumerate(objs)}
    pooled = spearman(out.cos[keep].flatten(), logit_cos[keep].flatten())
    result = {
        "nodes": int(keep.sum()),
        "params": subset,
        "n_params": sum(p.numel() for n, p in model.named_parameters() if n in out.params),
        "spearman": rho,
        "spearman_pooled": pooled,
        "mean_cos_logit": logit_cos[keep].mean(0).tolist(),
        "mean_cos_param": out.cos[keep].mean(0).tolist(),
        "seconds": elapsed,
        "rollout": tok.decode(rollout),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
