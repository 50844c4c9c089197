"""Teacher: black-box text only, and the on-disk cache that never pays for a response twice."""
import json

import data as data_mod
import teacher as T
import world


class CountingTeacher(T.EmbeddedTeacher):
    def __init__(self, seed=0):
        super().__init__(seed)
        self.calls = 0

    def respond(self, messages, n=1):
        self.calls += 1
        return super().respond(messages, n)


def test_second_collection_makes_zero_calls_and_returns_identical_text(tmp_path):
    prompts = world.prompts("train")[:20]
    path = str(tmp_path / "cache.jsonl")
    t1 = CountingTeacher()
    first, _, calls = T.collect(t1, prompts, T.TeacherCache(path), n=2)
    assert calls == 20 and t1.calls == 20
    t2 = CountingTeacher()
    second, _, calls = T.collect(t2, prompts, T.TeacherCache(path), n=2)   # a fresh process would reload the file
    assert calls == 0 and t2.calls == 0 and second == first
    assert all(isinstance(r, str) for rs in second for r in rs)


def test_interrupted_collection_resumes_and_skips_a_torn_line(tmp_path):
    prompts = world.prompts("train")[:10]
    path = tmp_path / "cache.jsonl"
    T.collect(CountingTeacher(), prompts[:6], T.TeacherCache(str(path)))
    with open(path, "a") as f:
        f.write('{"key": "abc", "respon')                               # a crash mid-write
    cache = T.TeacherCache(str(path))
    assert cache.torn_lines == 1
    t = CountingTeacher()
    out, _, calls = T.collect(t, prompts, cache)
    assert calls == 4 and t.calls == 4 and len(out) == 10


def test_cache_key_depends_on_teacher_messages_and_params():
    m = world.prompts("train")[0]
    k = T.cache_key("a", m, {"n": 1})
    assert k == T.cache_key("a", json.loads(json.dumps(m)), {"n": 1})
    assert len({k, T.cache_key("b", m, {"n": 1}), T.cache_key("a", m, {"n": 2}),
                T.cache_key("a", world.prompts("train")[1], {"n": 1})}) == 4


def test_embedded_teacher_is_stochastic_multimodal_and_in_support():
    t = T.EmbeddedTeacher(seed=0)
    m = world.prompts("train")[0]
    answers = t.respond(m, 200)
    verdicts = [world.judge(world.topic_of(m), a) for a in answers]
    assert all(v["valid"] and v["relevant"] for v in verdicts)
    assert {v["mode"] for v in verdicts} == {"fact", "opinion", "list"}
    assert len(set(answers)) > 50
    assert t.respond(m, 3) == answers[:3]                        # deterministic given (seed, prompt)
    assert T.EmbeddedTeacher(seed=1).respond(m, 3) != answers[:3]


def test_a_torn_last_line_is_cut_off_so_only_that_answer_is_asked_again(tmp_path):
    prompts = world.prompts("train")[:4]
    path = tmp_path / "cache.jsonl"
    T.collect(CountingTeacher(), prompts[:3], T.TeacherCache(str(path)))
    text = path.read_text()
    path.write_text(text[:-40])                                      # the third record is torn mid-write
    cache = T.TeacherCache(str(path))
    assert cache.torn_lines == 1 and len(cache.entries) == 2 and path.read_text().endswith("\n")
    t = CountingTeacher()
    T.collect(t, prompts, cache)
    assert t.calls == 2                                             # the torn one and the new one, nothing else
    again = T.TeacherCache(str(path))
    assert again.torn_lines == 0 and len(again.entries) == 4        # no fragment glued to the next record
    t = CountingTeacher()
    T.collect(t, prompts, again)
    assert t.calls == 0


class ScriptedTeacher(T.EmbeddedTeacher):
    """Answers from a script of (texts, finishes) per call, then the embedded teacher's answers."""

    def __init__(self, script):
        super().__init__()
        self.script, self.calls = list(script), 0

    def answer(self, messages, n=1):
        self.calls += 1
        return self.script.pop(0) if self.script else super().answer(messages, n)


def test_empty_answers_are_retried_and_asked_again_on_a_rerun(tmp_path):
    m = world.prompts("train")[:1]
    path = str(tmp_path / "cache.jsonl")
    t = ScriptedTeacher([([""], ["stop"]), ([" \n"], ["stop"])])
    texts, _, _ = T.collect(t, m, T.TeacherCache(path))
    assert t.calls == 3 and texts[0][0].strip()                     # two empty replies, then a real one
    t = ScriptedTeacher([([""], ["stop"])] * (1 + T.EMPTY_RETRIES))
    path2 = str(tmp_path / "cache2.jsonl")
    texts, _, calls = T.collect(t, m, T.TeacherCache(path2))
    assert t.calls == 1 + T.EMPTY_RETRIES and texts == [[""]]       # bounded: recorded as empty
    t = ScriptedTeacher([])
    texts, _, calls = T.collect(t, m, T.TeacherCache(path2))          # a rerun asks again
    assert calls == 1 and t.calls == 1 and texts[0][0].strip()


def test_refusals_and_cut_off_answers_are_recorded_never_asked_again_and_not_trained_on(tmp_path):
    import train_gad
    prompts = world.prompts("train")[:5]
    path = str(tmp_path / "cache.jsonl")
    t = ScriptedTeacher([([None], ["refused"]), (["cats are"], ["length"])])
    texts, finishes, _ = T.collect(t, prompts, T.TeacherCache(path))
    assert [f[0] for f in finishes] == ["refused", "length", "stop", "stop", "stop"] and texts[0] == [None]
    t = ScriptedTeacher([])
    assert T.collect(t, prompts, T.TeacherCache(path))[1] == finishes and t.calls == 0
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"content": m}) + "\n" for m in prompts))
    cfg = train_gad.parse_args(["--prompts", str(f), "--teacher-cache", path, "--out-dir", str(tmp_path / "run"),
                                "--batch-prompts", "2"])
    logs = []
    records = data_mod.read_training_file(cfg.prompts, False, cfg.batch_prompts, logs.append)
    kept_prompts, kept_texts = train_gad.teacher_pairs(cfg, records, logs.append)
    assert kept_prompts == prompts[2:] and "cats are" not in kept_texts
    assert any("1 of 5 answers refused" in x for x in logs)
    assert any("1 of 5 answers cut off at the teacher's token limit" in x for x in logs)


def test_hf_teacher_marks_answers_cut_at_its_token_limit(tiny_dir):
    t = T.HFTeacher(tiny_dir, max_new_tokens=3, temperature=1.0)
    import torch
    torch.manual_seed(0)
    texts, finishes = t.answer(world.prompts("train")[0], 8)
    assert set(finishes) <= {"stop", "length"} and "length" in finishes   # a random model rarely stops in 3 tokens


def test_endpoint_names_are_normalised_and_never_hold_credentials(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    a = T.endpoint("http://127.0.0.1:8000/v1")[1]
    assert a == T.endpoint("http://127.0.0.1:8000/v1/")[1] == T.endpoint("HTTP://LocalHost:8000/v1".replace(
        "LocalHost", "127.0.0.1"))[1]
    assert T.endpoint("https://api.example.com:443/v1/")[1] == "https://api.example.com/v1"
    url, name = T.endpoint("http://user:s3cret@127.0.0.1:8000/v1")
    assert "s3cret" in url and "s3cret" not in name and "user" not in name
    assert T.redact_url("http://user:s3cret@host/v1") == "http://***@host/v1"
    assert T.endpoint(None)[1] == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9999/v1/")
    assert T.endpoint(None) == ("http://127.0.0.1:9999/v1/", "http://127.0.0.1:9999/v1")
    assert T.OpenAITeacher("m").name == "openai:m@http://127.0.0.1:9999/v1"    # the client's own variable
    assert T.OpenAITeacher("m").client.base_url.host == "127.0.0.1"
