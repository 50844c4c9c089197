"""Micro-batched updates give the full batch's gradient; memory-lean log-probs equal the full-logits ones."""
import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

import generator as G
import train_gad
import world
from data import Batch, pack, position_ids, prompt_ids
from discriminator import Discriminator


def full_logits_logprobs(model, batch, temperature):
    """The trusted reference: every position's logits at once, log_softmax, gather (what the code did before)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=position_ids(batch["attention_mask"])).logits[:, :-1].float() / temperature
    logp_all = F.log_softmax(logits, -1)
    logp = F.pad(logp_all.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1), (1, 0))
    ent = F.pad(-(logp_all.exp() * logp_all).sum(-1), (1, 0))
    return logp, ent


@pytest.fixture(scope="module")
def big_vocab_lm():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=65536, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128))


@pytest.mark.parametrize("left_pad", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
def test_lean_logprobs_entropy_and_gradients_match_full_logits(big_vocab_lm, left_pad, chunked, monkeypatch):
    if chunked:  # force several chunks (each recomputed in backward) on this small batch
        monkeypatch.setattr(G, "LOGITS_PER_CHUNK", 65536 * 5)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 65536, (k,), generator=g).tolist() for k in (5, 2, 9)]
    responses = [torch.randint(0, 65536, (k,), generator=g).tolist() for k in (12, 1, 4)]
    batch = pack(prompts, responses, 0, left_pad=left_pad)
    mask = batch["response_mask"].bool()
    grads = []
    for lean in (True, False):
        big_vocab_lm.zero_grad()
        if lean:
            logp, ent = G.token_logprobs(big_vocab_lm, batch, 0.8, with_entropy=True)
        else:
            logp, ent = full_logits_logprobs(big_vocab_lm, batch, 0.8)
        values = (logp[mask], ent[mask])
        (logp[mask] * torch.linspace(-1, 1, int(mask.sum()))).sum().backward()
        grads.append(([v.detach() for v in values], [p.grad.clone() for p in big_vocab_lm.parameters()]))
    (lp, le), lean_grads = grads[0]
    (rp, re), ref_grads = grads[1]
    assert torch.allclose(lp, rp, atol=1e-5) and torch.allclose(le, re, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(lean_grads, ref_grads))


@pytest.fixture(scope="module")
def players(tok):
    torch.manual_seed(0)
    gen = LlamaForCausalLM(world.student_config(tok, hidden=32, layers=2))
    disc = Discriminator(copy.deepcopy(gen.model))
    return gen, disc


def uneven_batch(tok, B=3, n=2):
    """B prompts, n samples each, of very different lengths (1 to 30 tokens)."""
    g = torch.Generator().manual_seed(2)
    prompts = [prompt_ids(tok, m) for m in world.prompts("train")[:B]]
    teacher = [torch.randint(6, len(tok), (k,), generator=g).tolist() + [tok.eos_token_id] for k in (30, 2, 11)][:B]
    samples = [torch.randint(6, len(tok), (k,), generator=g).tolist() for k in (1, 29, 7, 3, 17, 12)][:B * n]
    batch = Batch(list(range(B)), prompts, pack(prompts, teacher, tok.pad_token_id),
                  pack(prompts, teacher, tok.pad_token_id))
    return batch, train_gad.student_batch(batch, samples, n, tok.pad_token_id)


def cfg_with(micro):
    return train_gad.parse_args(["--n-samples", "2", "--batch-prompts", "3", "--micro-batch-size", str(micro),
                                 "--grad-clip", "1e9"])


def grads_after(update, model):
    """Run an update whose optimiser has lr 0 (nothing moves), then read the accumulated gradient."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    metrics = update(opt)
    return [p.grad.clone() for p in model.parameters()], metrics


@pytest.mark.parametrize("micro", [1, 2, 3, 5])
def test_micro_batched_updates_give_the_full_batch_gradient(players, tok, micro):
    gen, disc = players
    ref = copy.deepcopy(gen).eval().requires_grad_(False)
    batch, s_batch = uneven_batch(tok)
    advantages = torch.tensor([1.0, -1.0, 0.3, -0.3, 2.0, -2.0])
    updates = {
        "sft": (gen, lambda cfg: lambda opt: train_gad.sft_update(gen, opt, batch.teacher, cfg)),
        "grpo": (gen, lambda cfg: lambda opt: train_gad.g_update(gen, ref, opt, s_batch, advantages, cfg)),
        "bt": (disc, lambda cfg: lambda opt: train_gad.d_update(disc, opt,
                                                               *train_gad.d_scores(disc, batch, s_batch, cfg), cfg)),
    }
    for name, (model, make) in updates.items():
        full, m_full = grads_after(make(cfg_with(0)), model)
        part, m_part = grads_after(make(cfg_with(micro)), model)
        for a, b in zip(full, part):
            assert torch.allclose(a, b, atol=1e-6, rtol=0), (name, micro, (a - b).abs().max())
        for k, v in m_full.items():
            if isinstance(v, float) and not k.endswith("grad_norm"):
                assert m_part[k] == pytest.approx(v, abs=1e-6), (name, k)


@pytest.mark.parametrize("micro", [1, 4])
def test_micro_batched_scores_and_reference_logprobs_are_the_same(players, tok, micro):
    gen, disc = players
    batch, s_batch = uneven_batch(tok)
    with torch.no_grad():
        t0, s0, _ = train_gad.d_scores(disc, batch, s_batch, cfg_with(0), backward=False)
        t1, s1, _ = train_gad.d_scores(disc, batch, s_batch, cfg_with(micro), backward=False)
        full = G.token_logprobs(gen, s_batch)
        for rows, part in train_gad.micro_batches(s_batch, micro):
            lp = G.token_logprobs(gen, part)
            assert torch.allclose(lp, full[rows, :lp.shape[1]], atol=1e-6)
            assert lp.shape[1] == int(part["attention_mask"].sum(-1).max())          # cut to its longest row
    assert torch.allclose(t0, t1, atol=1e-6) and torch.allclose(s0, s1, atol=1e-6)


@pytest.mark.parametrize("setting", ["tiny", "tiny-lora"])
def test_the_benchmark_runs_and_reports_every_phase(tmp_path, setting):
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flags = ["--rss-in-use"] if setting == "tiny-lora" else []   # one of the two with freed memory given back
    p = subprocess.run([sys.executable, "tools/bench.py", "--only", setting, "--steps", "2", "--out", str(tmp_path),
                        *flags], cwd=root,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (r,) = json.load(open(tmp_path / "bench.json"))
    assert r["setting"] == setting and r["rows"] == 8 and r["micro_batch_size"] == 3 and r["peak_gb"] > 0
    assert r["rss_in_use"] == bool(flags)
    assert all(r["seconds"][k] > 0 for k in ("sample", "d_score", "d_update", "reference", "g_update"))
    assert r["seconds"]["total"] >= sum(r["seconds"][k] for k in ("sample", "d_score", "reference", "g_update"))
    assert f"| {setting} |" in p.stdout
    phases = r["peak_gb_by_phase"]   # each phase's own peak (Linux: VmHWM reset before it), all within the whole
    assert set(phases) == {"load", "sample", "d_score", "d_update", "g_update"}
    assert all(0 < v <= r["peak_gb"] for v in phases.values())
    saved = r["saved_gb_by_phase"]   # activations: none while sampling (no grad), some wherever a backward runs
    assert saved["sample"] == 0 and saved["d_score"] > 0 and saved["g_update"] > 0


def test_saved_bytes_counts_what_autograd_keeps_for_backward():
    import bench
    m = torch.nn.Sequential(torch.nn.Linear(100, 200), torch.nn.ReLU(), torch.nn.Linear(200, 50))
    x = torch.randn(64, 100)
    hooks = bench.SavedBytes(m)
    with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack):
        y = m(x).sum()
    # x, for the first weight's gradient; ReLU's output, for ReLU's backward and the second weight's (one storage)
    assert hooks.now == hooks.peak == (64 * 100 + 64 * 200) * 4
    y.backward()
    del y
    assert hooks.now == 0 and hooks.peak == (64 * 100 + 64 * 200) * 4   # freed by the backward, the peak kept
    m.requires_grad_(False)                                            # frozen weights (LoRA's base): x not kept
    hooks = bench.SavedBytes(m)
    with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack):
        m(x.requires_grad_(True)).sum()
    assert hooks.peak == 64 * 200 * 4


def test_the_prepared_gpu_check_runs_in_its_tiny_cpu_mode(tmp_path):
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "tools/gpu_check.py", "--tiny", "--out", str(tmp_path)], cwd=root,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = json.load(open(tmp_path / "gpu_check.json"))["rows"]
    assert [r["setting"] for r in rows] == ["gpu-tiny", "gpu-tiny-lora"] and [r["lora"] for r in rows] == [False, True]
    for r in rows:
        assert r["update_mfu"] > 0 and r["rollout_tokens_per_s"] > 0 and r["peak_gb"] > 0
        assert r["parameters"] == rows[0]["parameters"]           # the same student, adapters not counted


@pytest.mark.parametrize("lora_flags", [[], ["--lora-rank", "4"]], ids=["full", "lora"])
def test_gradient_checkpointing_keeps_fewer_activations_as_loaded_and_after_sampling(tiny_dir, tok, lora_flags):
    """--gradient-checkpointing is on in G and D as train_gad loads them (in eval mode, no .train() anywhere) and
    stays on after sampling: far fewer activations kept for backward, the same gradients."""
    import bench
    import lora
    from discriminator import load_discriminator
    ids = torch.randint(5, len(tok) - 1, (4, 24), generator=torch.Generator().manual_seed(0))
    kept, grads = {}, {}
    for ckpt in (False, True):
        lora.BASES.clear()
        cfg = train_gad.parse_args([*lora_flags, *(["--gradient-checkpointing"] if ckpt else [])])
        torch.manual_seed(0)
        g, d = G.load_generator(tiny_dir, cfg), load_discriminator(tiny_dir, cfg)
        G.sample(g, tok, [[5, 6, 7]], 2, 1.0, 4)          # generation runs in eval mode; the flags come back after
        hooks = bench.SavedBytes(g, d)
        with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack):
            loss = g(input_ids=ids).logits.square().mean() + d.backbone(input_ids=ids).last_hidden_state.mean()
        loss.backward()
        kept[ckpt] = hooks.peak
        grads[ckpt] = [p.grad.clone() for m in (g, d.backbone) for p in m.parameters() if p.requires_grad]
    lora.BASES.clear()
    assert kept[True] < kept[False] / 2, kept
    assert len(grads[True]) == len(grads[False]) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[False], grads[True]))
