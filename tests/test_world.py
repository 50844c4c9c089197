"""The embedded world: splits, tokenizer, and the privileged judge."""
import json
import os
import random

import pytest

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
    """docs/world.md's "424 valid answers per topic": the teacher's samples reach exactly that many."""
    rng = random.Random(0)
    m = world.prompts("train")[0]
    answers = {world.teacher_respond(m, rng) for _ in range(30000)}
    assert all(world.judge(world.topic_of(m), a)["valid"] for a in answers)
    n = len(world.CATEGORIES["animal"][1])                    # adjectives per category
    verbs = len(world.CATEGORIES["animal"][2])
    assert len(answers) == n * verbs + n * (n - 1) + n * (n - 1) * (n - 2) == 424   # fact + opinion + list


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


def test_the_default_run_starts_from_the_shipped_student_without_pretraining(tmp_path, monkeypatch):
    import run
    import train_gad
    monkeypatch.setattr(world, "build_student", lambda *a, **k: (_ for _ in ()).throw(AssertionError("pretrained")))
    lines = []
    path = run.student_folder(train_gad.parse_args(["--out-dir", str(tmp_path / "run")]), lines.append)
    assert "shipped starting student" in lines[0]
    assert world.file_sha256(os.path.join(path, "model.safetensors")) == \
        world.file_sha256(os.path.join(world.SHIPPED_STUDENT, "model.safetensors"))


def test_a_damaged_shipped_student_is_refused_in_one_line(tmp_path, monkeypatch):
    import shutil
    copy = tmp_path / "embedded_student"
    shutil.copytree(world.SHIPPED_STUDENT, copy)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(4000)
        f.write(b"\x00\x01\x02\x03")
    monkeypatch.setattr(world, "SHIPPED_STUDENT", str(copy))
    with pytest.raises(SystemExit, match=r"model.safetensors: sha256 .* is not recipe.json's"):
        world.shipped_student()


@pytest.mark.parametrize("damage, needle", [
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace('"rms_norm_eps": 1e-06',
                                                                                        '"rms_norm_eps": 1e-05')),
     r"config.json: sha256 .* is not recipe.json's"),
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace('"silu"', '"gelu"')),
     r"config.json: sha256 .* is not recipe.json's"),
    (lambda d: (d / "tokenizer.json").unlink(), r"tokenizer.json is missing"),
    (lambda d: (d / "config.json").unlink(), r"config.json is missing"),
    (lambda d: (d / "recipe.json").write_text('{"recipe": {"seed": 0'), r"recipe.json is damaged"),
    (lambda d: (d / "recipe.json").write_text('{"recipe": {}}'), r"recipe.json is damaged"),
    (lambda d: (d / "recipe.json").unlink(), r"is incomplete \(no recipe.json\)"),
], ids=["rms_norm_eps", "hidden_act", "no-tokenizer", "no-config", "torn-recipe", "no-hashes", "no-recipe"])
def test_every_file_of_the_shipped_student_is_checked(tmp_path, monkeypatch, damage, needle):
    import shutil
    copy = tmp_path / "embedded_student"
    shutil.copytree(world.SHIPPED_STUDENT, copy)
    damage(copy)
    monkeypatch.setattr(world, "SHIPPED_STUDENT", str(copy))
    with pytest.raises(SystemExit, match=needle):
        world.shipped_student()


def test_a_damaged_copy_in_a_run_folder_is_replaced_by_the_shipped_student(tmp_path):
    import run
    import train_gad
    cfg = train_gad.parse_args(["--out-dir", str(tmp_path / "run")])
    path = run.student_folder(cfg, lambda *a: None)
    config = os.path.join(path, "config.json")
    with open(config) as f:
        text = f.read()
    with open(config, "w") as f:
        f.write(text.replace('"silu"', '"gelu"'))                       # damaged while the original was too
    lines = []
    assert run.student_folder(cfg, lines.append) == path
    assert any("not the shipped student any more" in x for x in lines) and open(config).read() == text


def test_the_shipped_student_follows_the_recipe_and_a_short_rebuild_does_too(tmp_path):
    """recipe.json matches what build_student would do today (corpus, tokenizer, hyper-parameters), so the shipped
    weights cannot silently drift from the code; a 20-step rebuild writes the same architecture, tokenizer and
    recipe (bar the step count). Bit equality with the shipped weights is not asked: it depends on the CPU."""
    shipped = json.load(open(os.path.join(world.SHIPPED_STUDENT, "recipe.json")))
    assert shipped["recipe"] == world.student_recipe()
    out = world.rebuild(str(tmp_path / "rebuilt"), steps=20, log=lambda *a: None)
    rebuilt = json.load(open(os.path.join(out, "recipe.json")))
    assert rebuilt["recipe"] == {**shipped["recipe"], "steps": 20, "corpus_sha256": world.student_recipe(steps=20)[
        "corpus_sha256"]}
    assert rebuilt["files_sha256"] == world.files_sha256(out) and "model.safetensors" in rebuilt["files_sha256"]
    assert world.shipped_student(out) == out
    for name in ("config.json", "tokenizer.json", "chat_template.jinja"):
        assert open(os.path.join(out, name)).read() == open(os.path.join(world.SHIPPED_STUDENT, name)).read(), name


def test_habits_world_keeps_the_teacher_and_changes_only_the_students_start():
    """--world habits: the default world's teacher and judge, a pretraining corpus with 5% teacher-like answers."""
    def teacher_like(corpus):
        return sum(world.judge(world.topic_of(m), r)["valid"] for m, r in corpus) / len(corpus)
    m = world.prompts("train")[3]
    default_answers = [world.teacher_respond(m, random.Random(k)) for k in range(50)]
    default_corpus = world.pretrain_corpus(4000, seed=1)
    try:
        world.use("habits")
        assert [world.teacher_respond(m, random.Random(k)) for k in range(50)] == default_answers
        habits = teacher_like(world.pretrain_corpus(4000, seed=1))
        assert world.version() == "habits-v1"
    finally:
        world.use("default")
    assert world.pretrain_corpus(4000, seed=1) == default_corpus     # the default world's student is untouched
    assert habits < 0.1 < 0.2 < teacher_like(default_corpus)
