"""Teacher: black-box text only, and the on-disk cache that never pays for a response twice."""
import json

import checkpoint
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
    kept_prompts, kept_texts = T.training_pairs(cfg, records, world.build_tokenizer(), logs.append)
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
    assert checkpoint.redact_url("http://user:s3cret@host/v1") == "http://***@host/v1"
    assert T.endpoint(None)[1] == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9999/v1/")
    assert T.endpoint(None) == ("http://127.0.0.1:9999/v1/", "http://127.0.0.1:9999/v1")
    assert T.OpenAITeacher("m").name == "openai:m@http://127.0.0.1:9999/v1"    # the client's own variable
    assert T.OpenAITeacher("m").client.base_url.host == "127.0.0.1"


# ---------------------------------------------------------------------------- the shared cache under stress (audit 3)
SIDE_BY_SIDE = """
import pathlib, sys
import teacher as T, world
pathlib.Path(sys.argv[2]).touch()                       # this run has started
t = T.OpenAITeacher("m", base_url=sys.argv[1], backoff=0.001, log=lambda *a: None)
print("CALLS", T.collect(t, world.prompts("train")[:200], T.TeacherCache(sys.argv[3]), concurrency=4)[2])
"""


def test_two_runs_side_by_side_on_one_cache_pay_once_for_each_answer(tmp_path):
    """Two processes collect the same 200 prompts into one cache at the same time (the server holds every answer
    until both have started): 200 answers are paid for, not 400."""
    import os
    import subprocess
    import sys
    import time
    from serve import TeacherServer
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    started = [tmp_path / "a.started", tmp_path / "b.started"]
    embedded = T.EmbeddedTeacher(seed=0)

    def respond(messages, n):
        deadline = time.time() + 60
        while not all(p.exists() for p in started) and time.time() < deadline:
            time.sleep(0.01)
        return embedded.respond(messages, n)

    with TeacherServer(respond) as server:
        procs = [subprocess.Popen([sys.executable, "-c", SIDE_BY_SIDE, server.url, str(s), str(tmp_path / "c.jsonl")],
                                  cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for s in started]
        outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    calls = sorted(int(o.split("CALLS ")[1]) for o, _ in outs)
    assert server.served == 200 and calls == [0, 200]
    assert len(open(tmp_path / "c.jsonl").read().split("\n")) == 201


def test_a_file_that_is_not_a_cache_is_refused_and_left_unchanged(tmp_path):
    import pytest
    for text in ('{"prompt": "tell me about cats ."}\n{"prompt": "describe dogs ."}',   # no final newline
                 '{"prompt": "tell me about cats ."}'):
        path = tmp_path / "data.jsonl"
        path.write_text(text)
        with pytest.raises(T.TeacherError, match="not a teacher cache"):
            T.TeacherCache(str(path))
        assert path.read_text() == text


def test_a_fragment_another_writer_left_costs_only_its_own_line(tmp_path):
    """Run A has the cache open; run B is killed mid-write, leaving a fragment; A's next answer is not glued to it."""
    prompts = world.prompts("train")[:4]
    path = tmp_path / "cache.jsonl"
    cache = T.TeacherCache(str(path))
    T.collect(CountingTeacher(), prompts[:3], cache)
    with open(path, "a") as f:
        f.write('{"key": "0123", "teacher": "embedded:wor')               # B's torn write
    T.collect(CountingTeacher(), prompts, cache)                          # A appends the 4th answer
    again = T.TeacherCache(str(path))
    assert again.torn_lines == 0 and len(again.entries) == 4
    t = CountingTeacher()
    T.collect(t, prompts, again)
    assert t.calls == 0


def test_a_complete_cache_on_a_read_only_mount_is_used_as_is(tmp_path, monkeypatch):
    import builtins
    import errno
    import os
    import pytest
    prompts = world.prompts("train")[:5]
    path = str(tmp_path / "cache.jsonl")
    first, _, _ = T.collect(CountingTeacher(), prompts, T.TeacherCache(path))
    real_open, real_os_open = builtins.open, os.open

    def read_only(error):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), error)

    def ro_open(file, mode="r", *a, **k):  # root ignores chmod: a read-only mount is simulated
        return read_only(file) if str(file).startswith(str(tmp_path)) and set(mode) & set("wa+") else \
            real_open(file, mode, *a, **k)

    def ro_os_open(file, flags, *a, **k):
        return read_only(file) if str(file).startswith(str(tmp_path)) and flags & (os.O_WRONLY | os.O_RDWR) else \
            real_os_open(file, flags, *a, **k)
    monkeypatch.setattr(builtins, "open", ro_open)
    monkeypatch.setattr(os, "open", ro_os_open)
    t = CountingTeacher()
    texts, _, calls = T.collect(t, prompts, T.TeacherCache(path))
    assert texts == first and calls == 0 and t.calls == 0
    with pytest.raises(T.TeacherError, match="answers are missing and the cache cannot be written"):
        T.collect(t, world.prompts("train")[:6], T.TeacherCache(path))


def test_prompts_over_max_prompt_len_are_never_sent_to_the_teacher(tmp_path):
    import train_gad
    from data import prompt_ids
    from serve import TeacherServer
    tok = world.build_tokenizer()
    prompts = world.prompts("train")[:40]
    lengths = sorted(len(prompt_ids(tok, m)) for m in prompts)
    limit = lengths[len(lengths) // 2]
    short = [m for m in prompts if len(prompt_ids(tok, m)) <= limit]
    assert 0 < len(short) < len(prompts)
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"content": m}) + "\n" for m in prompts))
    embedded = T.EmbeddedTeacher(seed=0)
    with TeacherServer(embedded.respond) as server:
        cfg = train_gad.parse_args(["--prompts", str(f), "--teacher", "openai:m", "--teacher-base-url", server.url,
                                    "--out-dir", str(tmp_path / "run"), "--max-prompt-len", str(limit),
                                    "--batch-prompts", "2"])
        logs = []
        records = data_mod.read_training_file(cfg.prompts, False, cfg.batch_prompts, logs.append)
        kept, _ = T.training_pairs(cfg, records, tok, logs.append)
    assert server.served == len(short) and kept == short
    assert any(f"skipped {len(prompts) - len(short)} of 40 prompts" in x for x in logs)


def test_ctrl_c_during_collection_stops_at_once_in_one_line(tiny_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from serve import TeacherServer
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"content": m}) + "\n" for m in world.prompts("train")[:20]))

    def respond(messages, n):  # a teacher that never answers in time: waiting for it would take 10 minutes
        time.sleep(600)
        return ["x"] * n
    with TeacherServer(respond) as server:
        proc = subprocess.Popen([sys.executable, "train_gad.py", "--student", tiny_dir, "--teacher", "openai:m",
                                 "--teacher-base-url", server.url, "--prompts", str(f), "--batch-prompts", "2",
                                 "--out-dir", str(tmp_path / "run")], cwd=root, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not server.requests and time.time() < deadline:
            time.sleep(0.05)
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
        waited = time.time() - t0
    # alone this takes ~1 s; the bound leaves room for a loaded machine and is far below the 600 s of a wait
    assert proc.returncode == 130 and waited < 120, (proc.returncode, waited)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("train_gad.py: interrupted")
