"""Teacher: black-box text only, and the on-disk cache that never pays for a response twice."""
import json

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
    first, calls = T.collect(t1, prompts, T.TeacherCache(path), n=2)
    assert calls == 20 and t1.calls == 20
    t2 = CountingTeacher()
    second, calls = T.collect(t2, prompts, T.TeacherCache(path), n=2)   # a fresh process would reload the file
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
    out, calls = T.collect(t, prompts, cache)
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
