"""The embedded world: splits, tokenizer, and the privileged judge."""
import random

import world


def test_splits_are_fixed_and_disjoint():
    train, test, ood = (world.prompts(s) for s in ("train", "test", "ood"))
    key = lambda ms: {m[-1]["content"] for m in ms}
    assert len(train) == 1408 and len(test) == 128 and len(ood) == 64
    assert not (key(train) & key(test)) and not (key(train) & key(ood)) and not (key(test) & key(ood))
    assert {world.topic_of(m) for m in test} <= {world.topic_of(m) for m in train}
    assert not {world.topic_of(m) for m in ood} & {world.topic_of(m) for m in train}
    assert world.prompts("test") == test


def test_tokenizer_round_trips_and_has_a_chat_template():
    tok = world.build_tokenizer()
    text = "three things about cats : furry , wild , quick ."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    rendered = tok.apply_chat_template(world.prompts("train")[0], add_generation_prompt=True, tokenize=False)
    assert rendered.startswith("<|user|>") and rendered.endswith("<|assistant|>")
    assert tok.unk_token_id not in tok(rendered, add_special_tokens=False)["input_ids"]


def test_judge_rejects_each_kind_of_failure():
    ok = "i think cats are furry and wild !"
    assert world.judge("cats", ok)["valid"]
    bad = {"wrong category words": "i think cats are sweet and wild !",
           "repeated adjective": "i think cats are furry and furry !",
           "off topic": "i think dogs are furry and wild !",
           "unfinished": "i think cats are furry and",
           "plain style": "cats are furry .",
           "ramble": "cats are furry . cats are wild . cats are quick ."}
    for why, text in bad.items():
        assert not world.judge("cats", text)["valid"], why
    assert not world.judge("cats", "i think dogs are furry and wild !")["relevant"]
    assert not world.judge("cats", "cats and dogs are furry .")["relevant"]


def test_pretraining_corpus_has_teacher_answers_as_a_minority():
    corpus = world.pretrain_corpus(4000, seed=0)
    valid = sum(world.judge(world.topic_of(m), r)["valid"] for m, r in corpus) / len(corpus)
    assert 0.15 < valid < 0.35, valid


def test_distinct_n():
    assert world.distinct_n(["a b c", "a b d"], 2) == 3 / 4
    assert world.distinct_n(["a a a a"], 2) == 1 / 3
    assert world.distinct_n([], 2) == 0


def test_support_size_is_what_the_teacher_actually_produces():
    """The README's "424 distinct valid answers per topic": the teacher's samples reach exactly that many."""
    rng = random.Random(0)
    m = world.prompts("train")[0]
    answers = {world.teacher_respond(m, rng) for _ in range(30000)}
    assert all(world.judge(world.topic_of(m), a)["valid"] for a in answers)
    assert len(answers) == world.support_size() == 424


def test_long_world_teacher_is_valid_and_its_constraints_are_judged():

    try:
        world.use("long")
        tok = world.build_tokenizer()
        rng, prompts = random.Random(0), world.prompts("train")[:200]
        answers = [world.teacher_respond(p, rng) for p in prompts]
        verdicts = [world.judge(world.topic_of(p), a) for p, a in zip(prompts, answers)]
        assert all(v["valid"] for v in verdicts)
        long = [a for a, v in zip(answers, verdicts) if v["mode"] == "long"]
        assert len(long) > 40 and all(len(a.split()) == 30 for a in long)
        assert all(len(tok(a)["input_ids"]) == 30 and tok.unk_token_id not in tok(a)["input_ids"] for a in long)
        words = long[0].split()
        topic, adjs = words[0], world.CATEGORIES[world.TOPIC_CATEGORY[words[0]]][1]
        closing = words[:-2] + [next(a for a in adjs if a != words[-2])] + ["."]          # closing != opening
        repeated = words[:9] + [words[11]] + words[10:]                                   # an item twice
        assert not world.judge(topic, " ".join(closing))["valid"]
        assert not world.judge(topic, " ".join(repeated))["valid"]
    finally:
        world.use("default")
    assert not world.judge(topic, long[0])["valid"]           # the default world's teacher has no such mode
    assert len(world.build_tokenizer()) == 135                # and its tokenizer is unchanged


def test_val_split_is_a_fixed_sample_of_train():
    val, train = world.prompts("val"), world.prompts("train")
    assert len(val) == 128 and all(v in train for v in val) and val == world.prompts("val")
