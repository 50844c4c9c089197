"""--teacher-batch: teacher answers through the Batch API (files + batches endpoints of serve.py on 127.0.0.1)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import teacher as T
import train_gad
import world
from serve import TeacherServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
N = 300  # prompts


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"content": m}) + "\n" for m in world.prompts("train")[:N]))
    return str(path)


def served(server, route):
    return sum(r["path"].endswith(route) for r in server.requests)


def cache_lines(path):
    return [json.loads(x) for x in open(path)]


def collect(server, out, prompts_file, cache):
    cfg = train_gad.parse_args(["--teacher", "openai:m", "--teacher-base-url", server.url, "--teacher-batch",
                                "--teacher-batch-poll", "0.01", "--out-dir", out, "--prompts", prompts_file,
                                "--teacher-cache", cache])
    os.makedirs(out, exist_ok=True)
    records = train_gad.read_training_file(prompts_file, False, cfg.batch_prompts, print)
    return T.training_pairs(cfg, records, world.build_tokenizer(), print)


def test_every_answer_lands_in_the_cache_once_through_one_batch(tmp_path, prompts_file):
    embedded, cache = T.EmbeddedTeacher(seed=0), str(tmp_path / "cache.jsonl")
    with TeacherServer(embedded.answer) as server:
        server.batch_polls = 3                         # in progress for three looks, then done
        prompts, texts = collect(server, str(tmp_path / "run"), prompts_file, cache)
        assert served(server, "/chat/completions") == 0 and served(server, "/batches") == 1
        assert len(texts) == N and texts == [embedded.respond(m)[0] for m in prompts]
        lines = cache_lines(cache)
        assert len(lines) == N and len({r["key"] for r in lines}) == N
        assert not os.path.exists(tmp_path / "run" / "teacher_batch.json")    # done with that batch
        collect(server, str(tmp_path / "run"), prompts_file, cache)          # a second run: all from the cache
        assert served(server, "/batches") == 1 and len(cache_lines(cache)) == N
    body = json.loads(server.files["file-0"].decode().splitlines()[0])
    assert body["url"] == "/v1/chat/completions" and body["body"]["model"] == "m"


def test_an_expired_batch_falls_back_to_live_calls_without_losing_answers(tmp_path, prompts_file):
    embedded, cache = T.EmbeddedTeacher(seed=0), str(tmp_path / "cache.jsonl")
    with TeacherServer(embedded.answer) as server:
        server.batch_expire = True                     # the batch answers its first half, then expires
        prompts, texts = collect(server, str(tmp_path / "run"), prompts_file, cache)
        assert served(server, "/chat/completions") == N - N // 2             # the rest, asked live
    assert texts == [embedded.respond(m)[0] for m in prompts]
    assert len(cache_lines(cache)) == N and len({r["key"] for r in cache_lines(cache)}) == N


def test_sigkill_while_waiting_then_a_rerun_submits_nothing_new(tiny_dir, tmp_path, prompts_file):
    out, cache = str(tmp_path / "run"), str(tmp_path / "cache.jsonl")
    embedded = T.EmbeddedTeacher(seed=0)
    cmd = [sys.executable, "train_gad.py", "--student", tiny_dir, "--teacher", "openai:m", "--prompts", prompts_file,
           "--teacher-batch", "--teacher-batch-poll", "0.02", "--out-dir", out, "--teacher-cache", cache,
           "--mode", "seqkd", "--seqkd-steps", "1", "--batch-prompts", "4", "--max-response-len", "12"]
    with TeacherServer(embedded.answer) as server:
        server.batch_polls = 10 ** 9                   # never done while the first run waits
        proc = subprocess.Popen(cmd + ["--teacher-base-url", server.url], cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state, deadline = os.path.join(out, "teacher_batch.json"), time.time() + 120
        while time.time() < deadline and not (os.path.exists(state) and served(server, "/batches/batch_0") >= 2):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        assert json.load(open(state))["batch_id"] == "batch_0" and not os.path.exists(cache)
        server.batch_polls = 0                         # the provider finishes the batch meanwhile
        p = subprocess.run(cmd + ["--teacher-base-url", server.url], cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        assert "resuming batch batch_0" in p.stdout + p.stderr
        assert served(server, "/batches") == 1 and served(server, "/files") == 1    # nothing new submitted
        assert served(server, "/chat/completions") == 0
    assert len(cache_lines(cache)) == N and not os.path.exists(state)


def test_teacher_batch_needs_an_openai_teacher(capsys):
    with pytest.raises(SystemExit):
        train_gad.parse_args(["--teacher-batch"])
    assert "--teacher-batch needs an openai:MODEL teacher" in capsys.readouterr().err


# ---------------------------------------------------------------------------- a provider's bad days (audit 3)
def output_item(custom_id, body):
    return json.dumps({"id": "req", "custom_id": custom_id, "error": None,
                       "response": {"status_code": 200, "request_id": "r", "body": body}}, ensure_ascii=False)


def test_bad_output_items_are_asked_live_and_every_good_answer_is_kept(tmp_path, prompts_file):
    """A malformed line, `choices: []`, `body: null`, content that is not text, an answer holding a raw U+2028,
    U+2029 or U+0085 (which str.splitlines would cut), and repeated items: no traceback, the state file goes, the
    readable answers are stored once, the rest asked live."""
    embedded, cache, logs = T.EmbeddedTeacher(seed=0), str(tmp_path / "cache.jsonl"), []

    def damage(lines):
        items = [json.loads(x) for x in lines]
        ids = [it["custom_id"] for it in items]
        bad = [lines[0][:40],                                                    # a malformed line
               output_item(ids[1], {"choices": []}), output_item(ids[2], None),
               output_item(ids[3], {"choices": [{"message": {"content": 17}, "finish_reason": "stop"}]})]
        odd = [output_item(ids[4 + i], {"choices": [{"message": {"content": f"cats are {c} ."},
                                                     "finish_reason": "stop"}]}) for i, c in
               enumerate(["\u2028", "\u2029", "\u0085"])]
        return bad + odd + lines[7:] + lines[7:12]                               # 5 items repeated

    with TeacherServer(embedded.answer) as server:
        server.batch_output = damage
        cfg = train_gad.parse_args(["--teacher", "openai:m", "--teacher-base-url", server.url, "--teacher-batch",
                                    "--teacher-batch-poll", "0.01", "--out-dir", str(tmp_path / "run"),
                                    "--prompts", prompts_file, "--teacher-cache", cache])
        os.makedirs(cfg.out_dir)
        records = train_gad.read_training_file(prompts_file, False, cfg.batch_prompts, logs.append)
        prompts, texts = T.training_pairs(cfg, records, world.build_tokenizer(), logs.append)
        assert served(server, "/chat/completions") == 4                          # the four unreadable items
    assert not os.path.exists(tmp_path / "run" / "teacher_batch.json")
    assert len(texts) == N and texts[4:7] == ["cats are \u2028 .", "cats are \u2029 .", "cats are \u0085 ."]
    assert len(cache_lines(cache)) == N
    assert any(f"{N - 4} of {N} answers stored" in x for x in logs)
    assert any("4 output line(s) could not be read" in x for x in logs)


def test_a_transient_error_while_polling_is_retried(tmp_path, prompts_file):
    embedded, cache = T.EmbeddedTeacher(seed=0), str(tmp_path / "cache.jsonl")
    with TeacherServer(embedded.answer) as server:
        server.batch_polls, server.poll_failures = 2, 2                         # two 500s among the looks
        prompts, texts = collect(server, str(tmp_path / "run"), prompts_file, cache)
        assert server.poll_failures == 0 and served(server, "/chat/completions") == 0
    assert len(texts) == N


def test_a_stale_batch_state_names_its_remedy(tmp_path, prompts_file):
    embedded, cache, out = T.EmbeddedTeacher(seed=0), str(tmp_path / "cache.jsonl"), tmp_path / "run"
    os.makedirs(out)
    with TeacherServer(embedded.answer) as server:
        name = T.OpenAITeacher("m", base_url=server.url).name
        (out / "teacher_batch.json").write_text(json.dumps({"batch_id": "batch_gone", "input_file_id": "file-9",
                                                            "teacher": name, "keys": ["k"]}))
        with pytest.raises(SystemExit, match=r"batch_gone .* not known to this endpoint \(404\); remove .*"
                                             r"teacher_batch.json to submit a new batch"):
            collect(server, str(out), prompts_file, cache)
