"""Parameter-space alignment (torch.func vjp + vmap) against plain autograd, one backward per vector."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diagnose.param_space import densify, param_space_alignment, select_params

transformers = pytest.importorskip("transformers")


def tiny_llama(seed=0, tie=True):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(cfg).float().eval()


def autograd_cosines(model, ids, nb, npos, g, d, names):
    """cos(J^T g, J^T d) with a loop of .backward() calls (the slow, obvious way)."""
    params = dict(model.named_parameters())

    def pulled(m, v):
        model.zero_grad()
        z = model(ids, use_cache=False).logits[nb[m], npos[m]]
        (z * v).sum().backward()
        return torch.cat([params[n].grad.flatten().double() for n in names])

    out = torch.zeros(d.shape[:2], dtype=torch.float64)
    for m in range(g.shape[0]):
        a = pulled(m, g[m])
        for j in range(d.shape[1]):
            b = pulled(m, d[m, j])
            out[m, j] = a @ b / (a.norm() * b.norm())
    return out


@pytest.mark.parametrize("subset", [None, r"layers\.1\.|embed_tokens"], ids=["all", "last-block+head"])
def test_matches_plain_autograd(subset):
    model = tiny_llama()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (2, 10), generator=gen)
    nb, npos = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([3, 9, 0, 4, 8])
    g, d = torch.randn(5, 97, generator=gen), torch.randn(5, 3, 97, generator=gen)
    out = param_space_alignment(model, ids, nb, npos, g, d, params=subset, chunk=4)
    ref = autograd_cosines(model, ids, nb, npos, g, d, out.params)
    torch.testing.assert_close(out.cos.double(), ref, atol=2e-5, rtol=0)
    assert out.cos.shape == (5, 3) and not out.degenerate.any()
    assert model.training is False


def test_identical_direction_has_cosine_one_and_scaling_is_ignored():
    model = tiny_llama(tie=False)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 97, (1, 8), generator=gen)
    g = torch.randn(2, 97, generator=gen)
    d = torch.stack([g, -3.0 * g, torch.zeros_like(g)], 1)
    out = param_space_alignment(model, ids, [0, 0], [2, 7], g, d)
    torch.testing.assert_close(out.cos[:, :2], torch.tensor([[1.0, -1.0], [1.0, -1.0]]), atol=1e-5, rtol=0)
    assert out.degenerate[:, 2].all() and (out.cos[:, 2] == 0).all()


def test_select_params_by_regex_prefix_and_ties():
    model = tiny_llama(tie=True)
    names = sorted(select_params(model, ["lm_head", "model.norm"]))
    assert names == ["lm_head.weight", "model.norm.weight"]  # the tied head appears under the name asked for
    assert list(select_params(model, r"embed_tokens")) == ["model.embed_tokens.weight"]
    assert len(select_params(model)) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="no trainable parameter"):
        select_params(model, "nothing_like_this")


def test_densify_places_candidates():
    g = densify(torch.tensor([[3, -1, 0]]), torch.tensor([[0.5, 9.0, -0.25]]), 5)
    assert g.tolist() == [[-0.25, 0.0, 0.0, 0.5, 0.0]]


def _embedded(request):
    try:
        return request.getfixturevalue("embedded_model_path")
    except pytest.FixtureLookupError:
        path = Path.home() / ".cache/diagnose/models/smollm2-135m-instruct"
        if not (path / "model.safetensors").exists():
            pytest.skip("embedded checkpoint not prepared")
        return str(path)


@pytest.mark.slow
def test_embedded_model_last_block_and_head(request):
    path = _embedded(request)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    last = model.config.num_hidden_layers - 1
    subset = rf"layers\.{last}\.|lm_head|embed_tokens|model\.norm"
    gen = torch.Generator().manual_seed(3)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, 8), generator=gen)
    nb, npos = torch.tensor([0]), torch.tensor([7])
    g = torch.randn(1, vocab, generator=gen) * 1e-2
    d = torch.randn(1, 2, vocab, generator=gen) * 1e-2
    out = param_space_alignment(model, ids, nb, npos, g, d, params=subset, chunk=3)
    assert any(n.startswith(f"model.layers.{last}.") for n in out.params)
    ref = autograd_cosines(model, ids, nb, npos, g, d, out.params)
    torch.testing.assert_close(out.cos.double(), ref, atol=1e-4, rtol=0)
