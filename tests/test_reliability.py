"""Reliability: resume after SIGKILL, a failing teacher, bad input, non-finite steps, secrets."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import generator as G
import teacher as T
import train_gad
import world
from conftest import assert_same_run
from serve import TeacherServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
RUN = ["--batch-prompts", "4", "--n-samples", "2", "--warmup-steps", "5", "--d-only-steps", "1", "--gad-steps", "25",
       "--seqkd-steps", "8", "--max-response-len", "12", "--save-every", "4", "--log-every", "1000",
       "--sample-every", "3"]


def metrics(out):
    recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    for r in recs:
        r.pop("seconds")
    return recs


def test_resume_after_sigkill_matches_the_uninterrupted_run(tiny_dir, tmp_path):
    a, b = str(tmp_path / "straight"), str(tmp_path / "killed")
    base = [sys.executable, "train_gad.py", "--student", tiny_dir, *RUN]
    subprocess.run(base + ["--out-dir", a], cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(base + ["--out-dir", b], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    path, deadline = os.path.join(b, "metrics.jsonl"), time.time() + 300
    while time.time() < deadline:  # kill once GAD step 14 is logged: after the resume point at step 12
        if os.path.exists(path) and any(r.get("step", -1) >= 14 for r in checkpoint.read_jsonl(path)):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(os.path.join(b, "gad", "generator"))
    assert json.load(open(os.path.join(b, "resume", "latest.json")))["next_step"] == 12

    other = subprocess.run(base + ["--out-dir", b, "--resume", "--lr-gad", "1e-3"], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert other.returncode != 0 and "--lr-gad 3e-05 -> 0.001" in other.stderr   # not the same run: refused
    out = subprocess.run(base + ["--out-dir", b, "--resume"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "[resume] continuing at gad step 12" in out.stdout + out.stderr
    assert_same_run(a, b, ("gad/generator", "gad/discriminator", "seqkd/generator"))   # bit for bit
    samples = [open(os.path.join(x, "samples.jsonl")).read().splitlines() for x in (a, b)]
    assert samples[0] == samples[1]   # the steps redone after the resume point are not written twice
    steps = [(r["stage"], r["step"]) for r in map(json.loads, samples[0])]
    assert steps == [("warmup", 0), ("warmup", 3)] + [("gad", s) for s in range(6, 30, 3)]
    rec = json.loads(samples[0][-1])
    assert len(rec["samples"]) == len(rec["ended"]) == len(rec["scores"]) == 4 * 2 == 2 * len(rec["prompts"])


def test_non_finite_steps_are_skipped_then_the_run_stops(tiny_dir, tmp_path, monkeypatch):
    real = G.policy_loss
    calls = {"n": 0}

    def poisoned(*args, **kw):
        loss, m = real(*args, **kw)
        calls["n"] += 1
        return (loss * float("nan"), m) if calls["n"] == 1 or calls["n"] >= 4 else (loss, m)
    monkeypatch.setattr(train_gad, "policy_loss", poisoned)
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit,
                       match="after 3 consecutive non-finite steps; last good resume point: .*step-gad-0000008"):
        train_gad.main(["--student", tiny_dir, "--out-dir", out, "--mode", "gad", *RUN])
    recs = metrics(out)
    gad = [r for r in recs if r["stage"] == "gad"]
    assert gad[0]["g_skipped"] == 1 and gad[0]["g_grad_norm"] is None       # logged, not stepped on
    assert "g_skipped" not in gad[1] and "g_skipped" not in gad[2]
    assert [r.get("g_skipped") for r in gad[3:]] == [1, 1, 1]
    assert os.path.exists(os.path.join(out, "resume", "step-gad-0000008", "state.pt"))


def test_failing_teacher_200_prompts_each_answered_once_and_kill_resume(tmp_path):
    prompts = world.prompts("train")[:220]
    embedded = T.EmbeddedTeacher(seed=0)
    logs = []
    path = str(tmp_path / "cache.jsonl")
    with TeacherServer(embedded.respond, fail_rate=0.3, seed=3, hang=1.0) as server:
        t = T.OpenAITeacher("e", base_url=server.url, timeout=0.3, backoff=0.001, log=logs.append)
        out, _, calls = T.collect(t, prompts[:120], T.TeacherCache(path), concurrency=8)   # an interrupted run...
        still_empty = sum(r == [""] for r in out)
        out, _, calls = T.collect(t, prompts, T.TeacherCache(path), concurrency=8)         # ...resumed later
    assert calls == 100 + still_empty                 # only what was missing (or still empty) was asked for
    lines = [json.loads(x) for x in open(path)]
    assert len({x["key"] for x in lines}) == 220
    assert t.retries == sum("retry" in x for x in logs) > 20
    kinds = " ".join(logs)
    assert "APITimeoutError" in kinds and "HTTP 429" in kinds and "HTTP 500" in kinds
    assert server.injected["empty"] > 0 and sum(r == [""] for r in out) < 3   # empty answers are asked again
    assert all(r == embedded.respond(m) for r, m in zip(out, prompts) if r != [""])


def test_quota_and_refusals(tmp_path):
    embedded = T.EmbeddedTeacher(seed=0)
    with TeacherServer(embedded.respond, fail_script=["quota"]) as server:
        t = T.OpenAITeacher("e", base_url=server.url, backoff=0.001, log=lambda *a: None)
        with pytest.raises(T.TeacherError, match="HTTP 429.*quota"):
            t.respond(world.prompts("train")[0])
        assert t.retries == 0
    with TeacherServer(embedded.respond, fail_script=["refuse"]) as server:
        t = T.OpenAITeacher("e", base_url=server.url, backoff=0.001, log=lambda *a: None)
        assert t.respond(world.prompts("train")[0]) == [None]


def test_empty_and_too_long_examples_are_skipped_and_counted(tok):
    cfg = train_gad.parse_args(["--max-prompt-len", "8", "--max-response-len", "6", "--batch-prompts", "1"])
    short = [{"role": "user", "content": "describe cats ."}]
    long = [{"role": "user", "content": "hey , what do you think of cats ?"}]
    logs = []
    data = train_gad.Data(tok, [short, short, short, long], ["cats are furry .", "", "cats are furry . " * 3,
                                                             "cats are furry ."], cfg, logs.append)
    assert len(data.prompt_ids) == 1
    text = "\n".join(logs)
    assert "1 of 4 examples: empty teacher response" in text
    assert "1 of 4 examples: teacher response > 6 tokens" in text and "1 of 4 examples: prompt > 8 tokens" in text


@pytest.mark.parametrize("case", ["malformed", "missing_column", "bad_role", "no_model", "bad_flag"])
def test_bad_input_exits_nonzero_with_one_clear_line(case, tmp_path):
    f = tmp_path / "data.jsonl"
    args = ["--teacher-data", str(f)]
    if case == "malformed":
        f.write_text('{"prompt": "a", "teacher_response": "b"}\n{"prompt": \n')
        needle = "data.jsonl: line 2: malformed JSON"
    elif case == "missing_column":
        f.write_text('{"prompt": "a"}\n')
        needle = "data.jsonl: row 1: missing field 'teacher_response'"
    elif case == "bad_role":
        f.write_text(json.dumps({"content": [{"role": "robot", "content": "hi"}], "teacher_response": "x"}) + "\n")
        needle = "row 1: field 'content'[0].role: unknown role 'robot'"
    elif case == "no_model":
        args, needle = ["--student", str(tmp_path / "missing-model")], "model folder not found"
    else:
        args, needle = ["--lr-d", "-0.5"], "--lr-d must be >= 0"
    p = subprocess.run([sys.executable, "train_gad.py", "--out-dir", str(tmp_path / "run"), *args],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert needle in last, p.stderr[-1500:]
    assert not os.path.exists(os.path.join(tmp_path, "run", "gad"))


def test_collection_killed_half_way_resumes_from_the_cache(tiny_dir, tmp_path):
    embedded = T.EmbeddedTeacher(seed=0)
    prompts = str(tmp_path / "prompts.jsonl")
    with open(prompts, "w") as f:
        f.writelines(json.dumps({"content": m}) + "\n" for m in world.prompts("train")[:200])

    def slow(messages, n):
        time.sleep(0.01)
        return embedded.respond(messages, n)
    out = str(tmp_path / "run")
    cache = os.path.join(out, "teacher_cache.jsonl")
    cmd = [sys.executable, "train_gad.py", "--student", tiny_dir, "--teacher", "openai:e", "--prompts", prompts,
           "--out-dir", out, "--mode", "seqkd", "--seqkd-steps", "1", "--teacher-concurrency", "2",
           "--teacher-cache", cache]
    with TeacherServer(slow) as server:
        proc = subprocess.Popen(cmd + ["--teacher-base-url", server.url], cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and not (os.path.exists(cache) and sum(1 for _ in open(cache)) >= 80):
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        kept = len(T.TeacherCache(cache).entries)
        assert 80 <= kept < 200
        before = server.served
        p = subprocess.run(cmd + ["--teacher-base-url", server.url], cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        assert server.served - before == 200 - kept               # only the missing prompts were asked
    assert len(T.TeacherCache(cache).entries) == 200


@pytest.mark.parametrize("flags, needle", [
    (["--grad-clip", "0"], "--grad-clip must be > 0"), (["--grad-clip", "-1"], "--grad-clip must be > 0"),
    (["--warmup-steps", "-1"], "--warmup-steps must be >= 0"), (["--gad-steps", "-5"], "--gad-steps must be >= 0"),
    (["--seqkd-steps", "-2"], "--seqkd-steps must be >= 0"), (["--clip-eps", "-0.1"], "--clip-eps must be >= 0"),
    (["--kl-coef", "-1"], "--kl-coef must be >= 0"), (["--weight-decay", "-0.01"], "--weight-decay must be >= 0"),
    (["--frozen-d", "no/such/folder"], "--frozen-d: no/such/folder is not a model folder"),
    (["--batch-prompts", "3000000"], "--batch-prompts 3000000 is larger than the embedded world's 1408"),
    (["--world", "nope"], "--world must be one of default, long, habits, list, got 'nope'"),
    (["--student-hidden", "30"], "--student-hidden must be a multiple of 4"),
    (["--train-prompts", "8"], "--train-prompts 8 is smaller than --batch-prompts 16"),
    (["--d-steps", "0"], "--d-steps must be >= 1, got 0"),
    (["--d-label-smoothing", "0.5"], "--d-label-smoothing must be below 0.5"),
    (["--d-label-smoothing", "-0.1"], "--d-label-smoothing must be >= 0"),
    (["--d-init", "no/such"], "--d-init no/such: expected a model folder (config.json), and not with --frozen-d"),
])
def test_unchecked_flags_are_refused_in_one_line(flags, needle, capsys):
    with pytest.raises(SystemExit):
        train_gad.parse_args(flags)
    assert needle in capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_input_leaves_an_earlier_runs_config_intact_and_loads_no_model(tiny_dir, tmp_path, monkeypatch):
    from transformers import AutoModel, AutoModelForCausalLM
    out = tmp_path / "finished"
    out.mkdir()
    (out / "config.json").write_text('{"student": "the finished run"}')
    loads = []
    for cls in (AutoModel, AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained", lambda *a, **k: loads.append(a) or 1 / 0)
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"prompt": f"q{i}", "teacher_response": "a"}) + "\n" for i in range(3)))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "\xff"}\n')
    for flags, needle in ((["--teacher-data", str(bad)], "line 1: not UTF-8"),
                          (["--teacher-data", str(small), "--batch-prompts", "4"], "larger than the 3 rows"),
                          (["--teacher-data", str(tmp_path)], "is a folder")):
        with pytest.raises(SystemExit, match=needle):
            train_gad.main(["--student", tiny_dir, "--out-dir", str(out), *flags])
    assert (out / "config.json").read_text() == '{"student": "the finished run"}' and not loads


def test_teacher_cache_is_shared_between_runs_and_credentials_are_never_written(tiny_dir, tmp_path, capfd):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"content": m}) + "\n" for m in world.prompts("train")[:6]))
    embedded = T.EmbeddedTeacher(seed=0)
    runs = tmp_path / "runs"
    with TeacherServer(embedded.respond) as server:
        secret_url = server.url.replace("//", "//alice:hunter2-secret@")
        for out, url in (("a", secret_url), ("b", server.url + "/")):   # another run, another spelling
            train_gad.main(["--student", tiny_dir, "--teacher", "openai:e", "--teacher-base-url", url,
                            "--prompts", str(prompts), "--out-dir", str(runs / out), "--mode", "seqkd",
                            "--seqkd-steps", "1", "--batch-prompts", "2", "--eval-models", ""])
        assert server.served == 6                                         # the second run paid for nothing
    logs = capfd.readouterr()
    written = "".join(open(os.path.join(d, f), errors="replace").read()
                      for d, _, files in os.walk(runs) for f in files if f.endswith((".json", ".jsonl")))
    assert "hunter2" not in written + logs.out + logs.err and "alice" not in written
    assert json.load(open(runs / "a" / "config.json"))["teacher_base_url"].startswith("http://***@127.0.0.1")
    assert len([f for f in os.listdir(runs / ".teacher_cache") if not f.endswith(".lock")]) == 1


def test_discriminator_loads_the_backbone_alone(tiny_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM
    real, loaded = AutoModelForCausalLM.from_pretrained.__func__, []

    def spy(cls, path, *a, **k):
        loaded.append(path)
        return real(cls, path, *a, **k)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    train_gad.main(["--student", tiny_dir, "--out-dir", str(tmp_path / "run"), "--mode", "gad", *RUN[:-6],
                    "--gad-steps", "1", "--warmup-steps", "1", "--eval-models", ""])
    # G, then the KL reference (the saved post-warmup G); never D: D is AutoModel (no LM head)
    assert loaded == [tiny_dir, str(tmp_path / "run" / "warmup" / "generator")]


@pytest.mark.parametrize("flags, needle", [(["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
                                           (["--limit", "-1"], "--limit must be >= 0"),
                                           (["--samples", "0"], "--samples must be >= 1")])
def test_eval_flags_are_checked(flags, needle, tmp_path):
    p = subprocess.run([sys.executable, "eval.py", str(tmp_path), *flags], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode != 0 and needle in p.stderr.strip().splitlines()[-1], p.stderr[-1000:]


def test_eval_bad_test_data_is_one_line(tmp_path):
    (tmp_path / "t.parquet").write_bytes(b"")
    p = subprocess.run([sys.executable, "eval.py", str(tmp_path), "--test-data", str(tmp_path / "t.parquet")],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "t.parquet: not a readable parquet file" in p.stderr.strip().splitlines()[-1]


def test_d_steps_and_train_prompts(tiny_dir, tmp_path, monkeypatch):
    """--d-steps k: k D updates per GAD step (warmup keeps one); --train-prompts N: the same N prompts, any seed."""
    calls, sizes = [], []
    real_update, real_data = train_gad.d_update, train_gad.Data

    def counting(*a, **k):
        calls.append(k.get("step", True))
        return real_update(*a, **k)

    def data(tok, prompts, texts, cfg, log):
        sizes.append(sorted(json.dumps(p) for p in prompts))
        return real_data(tok, prompts, texts, cfg, log)
    monkeypatch.setattr(train_gad, "d_update", counting)
    monkeypatch.setattr(train_gad, "Data", data)
    for seed in (0, 1):
        train_gad.main(["--student", tiny_dir, "--out-dir", str(tmp_path / f"run{seed}"), "--mode", "gad",
                        "--seed", str(seed), "--batch-prompts", "4", "--n-samples", "2", "--warmup-steps", "2",
                        "--d-only-steps", "1", "--gad-steps", "3", "--d-steps", "3", "--train-prompts", "40",
                        "--max-response-len", "12", "--eval-models", "", "--save-every", "0"])
    assert calls == ([True] * (2 + 3 * 3)) * 2               # warmup: 1 per step; GAD: 3 per step
    assert len(sizes[0]) == 40 and sizes[0] == sizes[1]       # the same 40 prompts for both seeds


def test_d_init_gives_d_another_backbone_and_label_smoothing_reaches_the_loss(tiny_dir, tok, tmp_path, monkeypatch):
    """--d-init: D's backbone from another causal LM of the student's tokenizer (here wider); another tokenizer is
    one line before any model loads. --d-label-smoothing reaches D's loss."""
    from transformers import AutoConfig, LlamaForCausalLM
    wide = str(tmp_path / "wide")
    torch.manual_seed(1)
    LlamaForCausalLM(world.student_config(tok, hidden=48, layers=2)).save_pretrained(wide)
    tok.save_pretrained(wide)
    seen = []
    real = train_gad.D_LOSSES["bt"]
    monkeypatch.setitem(train_gad.D_LOSSES, "bt", lambda *a, **k: seen.append(k["smoothing"]) or real(*a, **k))
    args = ["--student", tiny_dir, "--mode", "gad", "--batch-prompts", "4", "--n-samples", "2", "--warmup-steps",
            "2", "--d-only-steps", "1", "--gad-steps", "2", "--max-response-len", "12", "--eval-models", "",
            "--save-every", "0", "--d-label-smoothing", "0.1"]
    train_gad.main(args + ["--out-dir", str(tmp_path / "run"), "--d-init", wide])
    hidden = {p: AutoConfig.from_pretrained(str(tmp_path / "run" / "gad" / p)).hidden_size
              for p in ("generator", "discriminator")}
    assert hidden == {"generator": 32, "discriminator": 48} and set(seen) == {0.1} and len(seen) == 4

    other = str(tmp_path / "other")
    shutil.copytree(wide, other)
    t2 = world.build_tokenizer()
    t2.add_tokens(["zebra-token"])
    t2.save_pretrained(other)
    with pytest.raises(SystemExit, match="--d-init .*other: its tokenizer is not the student's"):
        train_gad.main(args + ["--out-dir", str(tmp_path / "run2"), "--d-init", other])
    assert not os.path.exists(tmp_path / "run2" / "config.json")   # refused before the run started
