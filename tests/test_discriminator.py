"""Discriminator: the score is read at the last response token; padding does not change it; EOS symmetry."""
import torch

import discriminator as D
import train_gad
import world
from data import pack, prompt_ids, response_ids


def make_disc(tiny_dir):
    torch.manual_seed(0)
    return D.Discriminator.from_pretrained(tiny_dir).eval()


def test_last_token_index_left_and_right():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert D.last_token_index(mask).tolist() == [2, 4, 4]


def test_score_is_read_at_the_last_response_token(tiny_dir, tok):
    disc = make_disc(tiny_dir)
    p = prompt_ids(tok, world.prompts("train")[0])
    r = response_ids(tok, "cats are furry .")
    batch = pack([p, p[:4]], [r, r[:2]], tok.pad_token_id)
    with torch.no_grad():
        scores = disc(batch)
        h = disc.backbone(input_ids=torch.tensor([p + r])).last_hidden_state[0]      # unpadded, direct
        assert torch.allclose(scores[0], disc.head(h[-1]).squeeze(), atol=1e-5)      # the EOS position
        assert not torch.allclose(scores[0], disc.head(h[-2]).squeeze(), atol=1e-3)  # not one before


def test_padding_does_not_change_a_score(tiny_dir, tok):
    disc = make_disc(tiny_dir)
    prompts = [prompt_ids(tok, m) for m in world.prompts("train")[:3]]
    responses = [response_ids(tok, t) for t in ["cats are furry .", "i think", "three things about dogs : a"]]
    with torch.no_grad():
        alone = torch.stack([disc(pack([p], [r], tok.pad_token_id))[0] for p, r in zip(prompts, responses)])
        right = disc(pack(prompts, responses, tok.pad_token_id))
        left = disc(pack(prompts, responses, tok.pad_token_id, left_pad=True))
    assert torch.allclose(alone, right, atol=1e-5) and torch.allclose(alone, left, atol=1e-5)


def test_teacher_and_student_rows_both_end_with_eos(tiny_lm, tok):
    """The symmetry test: D sees EOS as the last token of teacher rows and of finished student rows."""
    cfg = train_gad.parse_args(["--batch-prompts", "3", "--n-samples", "2"])
    prompts = world.prompts("train")[:3]
    data = train_gad.Data(tok, prompts, ["cats are furry .", "dogs are wild .", "i think owls are quick !"],
                          cfg, log=lambda *a: None)
    batch = data.next()                                        # the three examples, in a shuffled order
    student = [response_ids(tok, t) for t in [data.teacher_texts[batch.idx[0]], "a", "b", "c", "d", "e"]]
    s_batch = train_gad.student_batch(batch, student, 2, tok.pad_token_id)
    for rows in (batch.teacher, batch.teacher_for_d, s_batch):
        last = D.last_token_index(rows["attention_mask"])
        assert (rows["input_ids"][torch.arange(len(last)), last] == tok.eos_token_id).all()
        # the response mask covers the EOS as well
        assert (rows["response_mask"][torch.arange(len(last)), last] == 1).all()
    # the same text as teacher and as a (finished) student sample is the very same row, so the same score
    t = batch.teacher
    assert torch.equal(t["input_ids"][0][t["attention_mask"][0].bool()], s_batch["input_ids"][0][
        s_batch["attention_mask"][0].bool()])


def test_the_eos_lab_strips_the_eos_from_ds_teacher_rows_only(tok):
    cfg = train_gad.parse_args(["--batch-prompts", "2", "--break-eos-symmetry"])
    data = train_gad.Data(tok, world.prompts("train")[:2], ["cats are furry .", "dogs are wild ."], cfg,
                          log=lambda *a: None)
    batch = data.next()
    for rows, eos in ((batch.teacher, True), (batch.teacher_for_d, False)):
        last = D.last_token_index(rows["attention_mask"])
        assert ((rows["input_ids"][torch.arange(2), last] == tok.eos_token_id).all()) == eos


def test_discriminator_save_and_reload(tiny_dir, tok, tmp_path):
    disc = make_disc(tiny_dir)
    with torch.no_grad():
        disc.head.bias.fill_(0.5)
    disc.save_pretrained(str(tmp_path))
    again = D.Discriminator.from_pretrained(str(tmp_path))
    batch = pack([prompt_ids(tok, world.prompts("train")[0])], [response_ids(tok, "x")], tok.pad_token_id)
    with torch.no_grad():
        assert torch.allclose(disc(batch), again(batch), atol=1e-6)


def test_padding_invariance_with_absolute_positions(tok, tmp_path):
    """GPT-2 has absolute position embeddings, so this also checks the position ids under left padding."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4)).save_pretrained(tmp_path)
    disc = D.Discriminator.from_pretrained(str(tmp_path)).eval()
    prompts = [prompt_ids(tok, m) for m in world.prompts("train")[:2]]
    responses = [response_ids(tok, t) for t in ["cats are furry . people watch them every day .", "i"]]
    with torch.no_grad():
        alone = torch.stack([disc(pack([p], [r], tok.pad_token_id))[0] for p, r in zip(prompts, responses)])
        left = disc(pack(prompts, responses, tok.pad_token_id, left_pad=True))
    assert torch.allclose(alone, left, atol=1e-5)
