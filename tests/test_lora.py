"""LoRA (lora.py, --lora-rank): adapters at init are the base exactly; G, the reference and D on one shared frozen
base equal three separately merged models; a step changes only adapters and D's head; a saved G loads in plain
transformers; exact resume; two torchrun processes take the same step as one."""
import os

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

import checkpoint
import lora
import train_gad
from conftest import assert_same_run
from data import Data, pack, student_batch
from discriminator import Discriminator, load_discriminator
from generator import load_generator
import world


def lora_cfg(tiny_dir, *flags):
    return train_gad.parse_args(["--student", tiny_dir, "--lora-rank", "4", "--lora-alpha", "8", "--batch-prompts",
                                 "4", "--n-samples", "2", "--max-response-len", "12", *flags])


def rows(tok):
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    return pack(prompts, [[14, 15, tok.eos_token_id], [16], [17, 18, 19, 20, tok.eos_token_id]], tok.pad_token_id)


def perturb(model, seed):
    """Non-zero adapters (B = 0 at init would make every comparison trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.adapters(model).values():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_adapters_at_init_give_the_base_exactly(tiny_dir, tok):
    cfg = lora_cfg(tiny_dir)
    torch.manual_seed(0)
    G = load_generator(tiny_dir, cfg)
    D = load_discriminator(tiny_dir, cfg)
    batch = rows(tok)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert torch.equal(G(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
                       base(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits)
    plain = Discriminator(AutoModel.from_pretrained(tiny_dir))
    plain.head.load_state_dict(D.head.state_dict())
    assert torch.equal(D(batch), plain(batch))
    assert sum(isinstance(m, lora.LoRALinear) for m in G.modules()) == 2 * 7      # 2 layers x q k v o gate up down


def test_three_players_share_one_base_and_equal_their_merged_models(tiny_dir, tok, tmp_path):
    cfg = lora_cfg(tiny_dir)
    G = load_generator(tiny_dir, cfg)
    D = load_discriminator(tiny_dir, cfg)
    perturb(G, 1)
    perturb(D.backbone, 2)
    checkpoint.save_model(G, str(tmp_path / "warmup"), tok)               # the hand-off: G's adapter, saved
    ref = load_generator(str(tmp_path / "warmup"), cfg).eval().requires_grad_(False)
    perturb(G, 3)                                                         # G moves on; the reference must not
    q = [m.self_attn.q_proj.base.weight for m in (G.model.layers[0], D.backbone.layers[0], ref.model.layers[0])]
    assert q[0] is q[1] is q[2]                                           # one base in memory, not copies
    assert G.model.embed_tokens.weight is D.backbone.embed_tokens.weight is ref.model.embed_tokens.weight
    assert not any(p.requires_grad for n, p in G.named_parameters() if "lora_" not in n)
    batch = rows(tok)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    for player, seed in ((G, None), (ref, None)):
        merged = AutoModelForCausalLM.from_pretrained(tiny_dir)
        merged.load_state_dict(lora.merged_state_dict(player.state_dict(), 8 / 4))
        assert torch.allclose(player(**inputs).logits, merged(**inputs).logits, atol=1e-5)
    assert not torch.allclose(G(**inputs).logits, ref(**inputs).logits, atol=1e-3)
    merged = Discriminator(AutoModel.from_pretrained(tiny_dir))
    merged.backbone.load_state_dict(lora.merged_state_dict(D.backbone.state_dict(), 8 / 4))
    merged.head.load_state_dict(D.head.state_dict())
    assert torch.allclose(D(batch), merged(batch), atol=1e-5)


def test_a_saved_generator_loads_in_plain_transformers_and_again_with_its_adapter(tiny_dir, tok, tmp_path):
    cfg = lora_cfg(tiny_dir)
    G = load_generator(tiny_dir, cfg)
    perturb(G, 4)
    checkpoint.save_model(G, str(tmp_path / "g"), tok)
    batch = rows(tok)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "g"))                 # no lora.py involved
    assert torch.allclose(plain(**inputs).logits, G(**inputs).logits, atol=1e-5)
    again = load_generator(str(tmp_path / "g"), cfg)
    assert all(torch.equal(a, b) for a, b in zip(lora.adapters(G).values(), lora.adapters(again).values()))
    with pytest.raises(SystemExit, match="rank 4, alpha 8.0"):
        load_generator(str(tmp_path / "g"), lora_cfg(tiny_dir, "--lora-rank", "2"))


def test_one_warmup_and_one_gad_step_change_only_adapters_and_the_head(tiny_dir, tok):
    cfg = lora_cfg(tiny_dir)
    torch.manual_seed(0)
    G = load_generator(tiny_dir, cfg)
    ref = load_generator(tiny_dir, cfg).eval().requires_grad_(False)
    D = load_discriminator(tiny_dir, cfg)
    before = {**{("G", k): v.clone() for k, v in G.state_dict().items()},
              **{("D", k): v.clone() for k, v in D.state_dict().items()}}
    g_opt, d_opt = train_gad.adamw(G, 1e-2, cfg), train_gad.adamw(D, 1e-2, cfg)
    assert {id(p) for g in g_opt.param_groups for p in g["params"]} == set(map(id, lora.adapters(G).values()))
    prompts = world.prompts("train")[:8]
    data = Data(tok, prompts, [world.teacher_respond(p, __import__("random").Random(0)) for p in prompts], cfg,
                print)
    train_gad.warmup_step(G, D, g_opt, d_opt, tok, data.next(), cfg)
    train_gad.gad_step(G, D, ref, g_opt, d_opt, tok, data.next(), cfg)
    after = {**{("G", k): v for k, v in G.state_dict().items()}, **{("D", k): v for k, v in D.state_dict().items()}}
    learned = {k for k in before if not torch.equal(before[k], after[k])}
    assert learned and all("lora_" in k[1] or k[1].startswith("head.") for k in learned), sorted(learned)[:5]
    assert ("D", "head.weight") in learned and any(k[0] == "G" and "lora_B" in k[1] for k in learned)
    student_batch  # (imported for the reader: the rows a GAD step builds)


def test_exact_resume_with_adapters(tiny_dir, tmp_path, monkeypatch):
    flags = ["--student", tiny_dir, "--lora-rank", "4", "--batch-prompts", "4", "--n-samples", "2",
             "--warmup-steps", "2", "--d-only-steps", "1", "--gad-steps", "6", "--mode", "gad", "--max-response-len",
             "12", "--eval-models", "", "--save-every", "2", "--log-every", "1000"]
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    lora.BASES.clear()
    train_gad.main(flags + ["--out-dir", straight])
    real, calls = train_gad.gad_step, {"n": 0}

    def crash_at_the_fifth(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")
        return real(*a, **k)
    monkeypatch.setattr(train_gad, "gad_step", crash_at_the_fifth)
    lora.BASES.clear()
    with pytest.raises(RuntimeError):
        train_gad.main(flags + ["--out-dir", killed])                      # resume point after GAD step 5
    monkeypatch.setattr(train_gad, "gad_step", real)
    lora.BASES.clear()                                                     # a new process would start empty
    train_gad.main(flags + ["--out-dir", killed, "--resume"])
    assert os.path.exists(os.path.join(killed, "gad", "generator", lora.ADAPTER_FILE))
    assert_same_run(straight, killed, ("warmup/generator", "gad/generator", "gad/discriminator"))


def test_two_processes_take_the_same_step_as_one_with_adapters(tiny_dir, tmp_path):
    from test_parallel import run_step
    out = run_step(tmp_path, tiny_dir, ["--lora-rank", "4"])
    for m1, m2 in zip(out["one"]["metrics"], out["two"]["metrics"]):
        assert m1.keys() == m2.keys()
        for k, v in m1.items():
            assert m2[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    for player in ("G", "D"):
        w1, w2 = out["one"]["weights"][player], out["two"]["weights"][player]
        assert w1.keys() == w2.keys()
        assert max(w1[k].abs().max().item() for k in w1 if k.endswith("lora_B")) > 1e-4   # the adapters learned
        for k in w1:
            assert torch.allclose(w1[k], w2[k], atol=1e-5), (player, k)


@pytest.mark.parametrize("flags", [["--gradient-checkpointing"], ["--micro-batch-size", "1"]], ids=["ckpt", "micro"])
def test_adapters_learn_under_gradient_checkpointing_and_micro_batches(tiny_dir, tok, flags):
    """The gradient reaches the adapters through checkpointed layers whose inputs (frozen embeddings) need none,
    and micro-batches of one row give the full batch's gradient."""
    grads = {}
    for name, extra in (("plain", []), ("changed", flags)):
        torch.manual_seed(0)
        cfg = lora_cfg(tiny_dir, *extra)
        G = load_generator(tiny_dir, cfg)
        perturb(G, 5)
        G.train()
        batch = rows(tok)
        train_gad.sft_update(G, train_gad.adamw(G, 0.0, cfg), batch, cfg)
        grads[name] = {k: p.grad.clone() for k, p in lora.adapters(G).items()}
    assert all(g.abs().sum() > 0 for g in grads["changed"].values())
    assert all(torch.allclose(grads["plain"][k], grads["changed"][k], atol=1e-6) for k in grads["plain"])
