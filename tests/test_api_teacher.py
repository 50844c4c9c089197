"""The OpenAI-compatible teacher and judge, over real HTTP on 127.0.0.1 (serve.TeacherServer + openai client)."""
import re

import pytest

import eval as E
import teacher as T
import world
from serve import TeacherServer

SECRET = "sk-test-DO-NOT-LEAK-4242"


@pytest.fixture
def embedded():
    return T.EmbeddedTeacher(seed=0)


def api_teacher(url, log=None, **kw):
    return T.OpenAITeacher("embedded-world", base_url=url, backoff=0.001, log=log or (lambda *a: None), **kw)


def test_collection_through_the_server_and_cache_hits(tmp_path, embedded):
    prompts = world.prompts("train")[:30]
    with TeacherServer(embedded.respond) as server:
        t = api_teacher(server.url)
        cache = T.TeacherCache(str(tmp_path / "c.jsonl"))
        out, _, calls = T.collect(t, prompts, cache, n=2, concurrency=4)
        assert calls == 30 and server.served == 30
        assert out == [embedded.respond(m, 2) for m in prompts]          # the text, unchanged, through HTTP
        assert all(r["body"]["n"] == 2 for r in server.requests)
        again, _, calls = T.collect(api_teacher(server.url), prompts, T.TeacherCache(str(tmp_path / "c.jsonl")), n=2)
        assert calls == 0 and len(server.requests) == 30 and again == out


def test_429_and_500_are_retried_nothing_lost_or_duplicated(tmp_path, embedded):
    prompts = world.prompts("train")[:12]
    logs = []
    with TeacherServer(embedded.respond, fail_script=[429, 500, 429, 503, 500]) as server:
        t = api_teacher(server.url, log=logs.append)
        out, _, calls = T.collect(t, prompts, T.TeacherCache(str(tmp_path / "c.jsonl")), concurrency=3)
    assert t.retries == 5 and sum("retry" in line for line in logs) == 5
    lines = open(tmp_path / "c.jsonl").read().splitlines()
    assert len(lines) == 12 and len({re.search(r'"key": "(\w+)"', ln).group(1) for ln in lines}) == 12
    assert out == [embedded.respond(m, 1) for m in prompts]


def test_random_failures_still_answer_every_prompt_once(tmp_path, embedded):
    prompts = world.prompts("train")[:60]
    with TeacherServer(embedded.respond, fail_rate=0.3, seed=1) as server:
        t = api_teacher(server.url)
        out, _, _ = T.collect(t, prompts, T.TeacherCache(str(tmp_path / "c.jsonl")), concurrency=4)
    assert t.retries > 5 and server.injected["empty"] > 0
    assert server.served == 60 + server.injected["empty"]            # an empty answer is asked again
    assert len(open(tmp_path / "c.jsonl").read().splitlines()) == 60 and all(o[0] for o in out)


def test_persistent_errors_stop_at_once_with_a_clear_message(tmp_path, embedded, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with TeacherServer(embedded.respond, api_key="the-right-key") as server:
        t = api_teacher(server.url)
        with pytest.raises(T.TeacherError, match="HTTP 401") as e:
            T.collect(t, world.prompts("train")[:3], T.TeacherCache(str(tmp_path / "c.jsonl")))
        assert SECRET not in str(e.value) and t.retries == 0
    with TeacherServer(embedded.respond, fail_script=[404]) as server:
        with pytest.raises(T.TeacherError, match="HTTP 404"):
            api_teacher(server.url).respond(world.prompts("train")[0])
    with TeacherServer(embedded.respond, fail_script=[500] * 10) as server:
        with pytest.raises(T.TeacherError, match="gave up after 3 attempts"):
            api_teacher(server.url, max_retries=2).respond(world.prompts("train")[0])


def test_missing_key_for_a_remote_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(T.TeacherError, match="set the OPENAI_API_KEY environment variable"):
        T.OpenAITeacher("gpt-4o-mini", base_url="https://example.invalid/v1")


def test_api_key_never_reaches_the_cache(tmp_path, embedded, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with TeacherServer(embedded.respond, api_key=SECRET) as server:
        t = api_teacher(server.url)
        T.collect(t, world.prompts("train")[:5], T.TeacherCache(str(tmp_path / "c.jsonl")))
        assert server.requests[0]["auth"] == f"Bearer {SECRET}"           # it was really sent...
    assert SECRET not in open(tmp_path / "c.jsonl").read()               # ...and never written


def fake_judge(messages, n):
    """Rates an answer 9 if it contains GOOD, else 3; cannot decide on questions containing 'weird'."""
    text = messages[-1]["content"]
    if "[Question]" not in text:
        return ["a reference answer"] * n
    if "weird" in text.split("[Assistant 1")[0]:
        return ["I refuse to give numbers."] * n
    a1 = text.split("[Assistant 1's answer]")[1].split("[End of Assistant 1")[0]
    a2 = text.split("[Assistant 2's answer]")[1].split("[End of Assistant 2")[0]
    return [f"{9 if 'GOOD' in a1 else 3} {9 if 'GOOD' in a2 else 3}\nbecause."] * n


def test_judge_protocol_scores_both_orders_and_counts_unparsed(tmp_path):
    qs = [[{"role": "user", "content": f"question {i}"}] for i in range(4)] + [[{"role": "user", "content": "weird"}]]
    answers = ["GOOD answer", "bad", "GOOD", "bad", "GOOD"]
    with TeacherServer(fake_judge) as server:
        judge = api_teacher(server.url)
        score, unparsed, judged = E.judge_scores(qs, answers, judge, T.TeacherCache(str(tmp_path / "j.jsonl")),
                                                 log=lambda *a: None)
        n_requests = len(server.requests)
        E.judge_scores(qs, answers, judge, T.TeacherCache(str(tmp_path / "j.jsonl")), log=lambda *a: None)
        assert len(server.requests) == n_requests                       # judge calls are cached too
    assert unparsed == 2 and judged == 4
    assert abs(score - (75 + 50 + 75 + 50) / 4) < 1e-9   # GOOD vs reference: 100*9/12; bad vs reference: 3 vs 3


def test_position_bias_cancels(tmp_path):
    """A judge that always prefers whatever it reads first scores every student 50."""
    first_wins = lambda messages, n: ["9 3"] * n if "[Question]" in messages[-1]["content"] else ["ref"] * n
    qs = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    with TeacherServer(first_wins) as server:
        score, unparsed, judged = E.judge_scores(qs, ["x", "y", "GOOD"], api_teacher(server.url),
                                                 T.TeacherCache(str(tmp_path / "j.jsonl")), log=lambda *a: None)
    assert score == 50.0 and unparsed == 0 and judged == 3


@pytest.mark.parametrize("reply, expected", [("8 6", (8, 6)), ("7/10 9/10", (7, 9)), ("  \n3.5, 4", (3.5, 4)),
                                             ("no scores here", None), ("11 2", None), ("", None)])
def test_parse_scores(reply, expected):
    assert E.parse_scores(reply) == expected


def test_rouge_and_ngram_overlap():
    assert E.rouge_l("a b c d", "a b c d") == 1.0 and E.rouge_l("x y", "a b") == 0.0
    assert abs(E.rouge_l("a x b", "a b") - 0.8) < 1e-9                 # LCS 2: p 2/3, r 1
    assert E.ngram_overlap("a a a", "a b", 1) == 1 / 3                   # clipped counts
    assert E.ngram_overlap("a b c", "a b d", 2) == 1 / 2
