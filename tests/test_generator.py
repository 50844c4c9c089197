"""Generator: packing, masks, sampling, and log-prob parity with a direct Hugging Face forward."""
import pytest
import torch
import torch.nn.functional as F

import generator as G
import world
from data import pack, position_ids, prompt_ids, response_ids


def hf_logprobs(model, ids):
    """The trusted reference: one unpadded sequence, plain HF forward, log_softmax, gather."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    return F.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


@pytest.fixture(scope="module")
def tiny_gpt2(tok):
    """Absolute position embeddings: unlike RoPE, a wrong position id under left padding changes the output."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128)).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("left_pad", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_logprob_parity_with_hf_forward(tiny_lm, tiny_gpt2, tok, arch, left_pad, temperature):
    model = {"llama": tiny_lm, "gpt2": tiny_gpt2}[arch]
    msgs = world.prompts("train")
    prompts = [prompt_ids(tok, m) for m in msgs[:3]]
    responses = [response_ids(tok, t) for t in ["cats are furry .", "i think dogs are wild and quick !", "ok"]]
    batch = pack(prompts, responses, tok.pad_token_id, left_pad=left_pad)
    with torch.no_grad():
        logp = G.token_logprobs(model, batch, temperature)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids = p + r
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float() / temperature
        ref = F.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
        ours = logp[i][batch["response_mask"][i].bool()]
        assert torch.allclose(ours, ref[len(p) - 1:], atol=1e-5), (left_pad, i)
    if temperature == 1.0:
        assert torch.allclose(hf_logprobs(model, prompts[0] + responses[0])[len(prompts[0]) - 1:],
                              logp[0][batch["response_mask"][0].bool()], atol=1e-5)


def test_pack_masks(tok):
    batch = pack([[7, 8, 9], [7]], [[1, 2, 5], [3, 5]], pad_id=0)
    assert batch["input_ids"].tolist() == [[7, 8, 9, 1, 2, 5], [7, 3, 5, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    assert batch["response_mask"].tolist() == [[0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0]]
    left = pack([[7, 8, 9], [7]], [[1, 2, 5], [3, 5]], pad_id=0, left_pad=True)
    assert left["input_ids"].tolist()[1] == [0, 0, 0, 7, 3, 5]
    assert left["response_mask"].tolist()[1] == [0, 0, 0, 0, 1, 1]
    assert position_ids(left["attention_mask"]).tolist()[1] == [0, 0, 0, 0, 1, 2]


def test_response_ids_end_with_eos(tok):
    r = response_ids(tok, "cats are furry .")
    assert r[-1] == tok.eos_token_id and tok.decode(r[:-1]) == "cats are furry ."


def test_sft_loss_only_counts_response_tokens(tiny_lm, tok):
    p = prompt_ids(tok, world.prompts("train")[0])
    r = response_ids(tok, "cats are furry .")
    batch = pack([p], [r], tok.pad_token_id)
    loss, _ = G.sft_loss(tiny_lm, batch)
    ref = -hf_logprobs(tiny_lm, p + r)[len(p) - 1:].mean()
    assert torch.allclose(loss, ref, atol=1e-5)


def test_sample_groups_n_per_prompt_and_cuts_at_eos(tiny_lm, tok):
    torch.manual_seed(0)
    prompts = [prompt_ids(tok, m) for m in world.prompts("train")[:3]]
    out = G.sample(tiny_lm, tok, prompts, n=4, temperature=1.0, max_new_tokens=6, gen_batch_size=8)
    assert len(out) == 12
    for r in out:
        assert 1 <= len(r) <= 6
        assert tok.eos_token_id not in r[:-1] and tok.pad_token_id not in r
    # chunking must not change what is sampled for a prompt's group (same RNG stream order)
    greedy = G.sample(tiny_lm, tok, prompts, n=2, temperature=0, max_new_tokens=6)
    single = G.sample(tiny_lm, tok, prompts[1:2], n=2, temperature=0, max_new_tokens=6)
    assert greedy[2:4] == single, "left padding in a batch must not change a greedy continuation"


def test_finished(tok):
    assert G.finished([3, tok.eos_token_id], tok.eos_token_id)
    assert not G.finished([3, 4], tok.eos_token_id) and not G.finished([], tok.eos_token_id)


@pytest.fixture()
def opinionated_lm(tok):
    """A model whose checkpoint asks for repetition_penalty 1.3, top_k 20, top_p 0.8 (like instruct models)."""
    from transformers import LlamaForCausalLM
    torch.manual_seed(1)
    model = LlamaForCausalLM(world.student_config(tok, hidden=32, layers=2)).eval()
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id = tok.pad_token_id, tok.eos_token_id
    gc.do_sample, gc.repetition_penalty, gc.top_k, gc.top_p = True, 1.3, 20, 0.8
    gc.no_repeat_ngram_size, gc.min_new_tokens = 1, 3
    return model


def test_sampling_ignores_the_checkpoints_generation_config(opinionated_lm, tok, monkeypatch):
    from transformers.generation import TemperatureLogitsWarper
    model = opinionated_lm
    built = []
    real = type(model)._get_logits_processor

    def spy(self, *args, **kw):
        built.append(real(self, *args, **kw))
        return built[-1]
    monkeypatch.setattr(type(model), "_get_logits_processor", spy)
    prompt = prompt_ids(tok, world.prompts("train")[0])
    torch.manual_seed(0)
    G.sample(model, tok, [prompt], n=2, temperature=0.8, max_new_tokens=4)
    assert [type(p) for p in built[0]] == [TemperatureLogitsWarper], built[0]   # temperature is the only processor
    assert model.generation_config.repetition_penalty == 1.3                  # the checkpoint's own config is kept


def test_sampled_first_tokens_follow_softmax_of_logits_over_temperature(opinionated_lm, tok):
    model, T, n = opinionated_lm, 0.8, 4000
    with torch.no_grad():
        model.lm_head.weight.mul_(8)          # a peaked distribution, so top_k / top_p would cut real mass
    prompt = prompt_ids(tok, world.prompts("train")[0])
    with torch.no_grad():
        p = torch.softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1] / T, -1)
    torch.manual_seed(0)
    first = [s[0] for s in G.sample(model, tok, [prompt], n=n, temperature=T, max_new_tokens=1, gen_batch_size=n)]
    freq = torch.bincount(torch.tensor(first), minlength=len(p)).float() / n
    tv = 0.5 * (freq - p).abs().sum().item()
    # sampling error of a 4000-sample histogram is ~0.03 TV; top_k 20 / top_p 0.8 / the penalties cut far more
    outside_top20 = 1 - p.topk(20).values.sum().item()
    assert outside_top20 > 0.1 and tv < 0.06, (tv, outside_top20)
