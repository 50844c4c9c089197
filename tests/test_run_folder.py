"""The run folder under stress (audit 3): a torn or unwritable metrics.jsonl, two runs on one folder, a folder reused
with other flags, a resume spelled differently, strict JSON, and what trackers may record."""
import errno
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

import checkpoint
import report
import run
import train_gad

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TINY = ["--batch-prompts", "4", "--n-samples", "2", "--warmup-steps", "2", "--d-only-steps", "1", "--gad-steps", "2",
        "--seqkd-steps", "2", "--max-response-len", "12", "--eval-models", "", "--save-every", "2",
        "--log-every", "1000"]


def records(out):
    return checkpoint.read_jsonl(os.path.join(out, "metrics.jsonl"))


def test_a_torn_metrics_tail_does_not_brick_the_folder(tiny_dir, tmp_path):
    out = str(tmp_path / "run")
    train_gad.main(["--student", tiny_dir, "--out-dir", out, *TINY])
    n = len(records(out))
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write('{"stage": "seqkd", "step": 2, "sft_lo')                # the disk filled up mid-line
    assert len(records(out)) == n                                      # readers leave the torn line out
    assert report.health(out).startswith("d_acc") and f"| {out} |" in report.compare([out])
    train_gad.main(["--student", tiny_dir, "--out-dir", out, *TINY, "--resume"])     # resumes
    train_gad.main(["--student", tiny_dir, "--out-dir", out, *TINY])                # and starts over
    assert len(records(out)) == n and open(os.path.join(out, "metrics.jsonl")).read().endswith("\n")


def test_a_failed_metrics_write_stops_in_one_line_and_leaves_no_torn_line(tmp_path, monkeypatch):
    path = str(tmp_path / "metrics.jsonl")
    checkpoint.append_jsonl(path, {"stage": "gad", "step": 0})
    real = os.write

    def full_disk(fd, data):
        real(fd, data[:7])                                             # part of the line reaches the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(SystemExit, match="cannot write .*metrics.jsonl: No space left on device"):
        checkpoint.append_jsonl(path, {"stage": "gad", "step": 1})
    monkeypatch.setattr(os, "write", real)
    assert open(path).read() == '{"stage": "gad", "step": 0}\n'


def test_every_json_the_project_writes_is_strict(tmp_path):
    checkpoint.write_json(str(tmp_path / "e.json"), {"judge_score": math.nan, "x": [math.inf, 1.5]})
    checkpoint.append_jsonl(str(tmp_path / "m.jsonl"), {"kl": -math.inf})
    strict = dict(parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert json.loads(open(tmp_path / "e.json").read(), **strict) == {"judge_score": None, "x": [None, 1.5]}
    assert json.loads(open(tmp_path / "m.jsonl").read(), **strict) == {"kl": None}


LOCK_HOLDER = ("import checkpoint, sys, time; f = checkpoint.lock_folder(sys.argv[1]); print('locked', flush=True); "
               "time.sleep(60)")


def test_a_second_run_on_a_locked_folder_stops_at_once(tiny_dir, tmp_path):
    out = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, out], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match=r"another train_gad.py is running in .*run"):
            train_gad.main(["--student", tiny_dir, "--out-dir", out, *TINY])
        assert not os.path.exists(os.path.join(out, "config.json")) and not os.path.exists(
            os.path.join(out, "metrics.jsonl"))
    finally:
        holder.kill()
        holder.wait()
    train_gad.main(["--student", tiny_dir, "--out-dir", out, *TINY])   # the lock dies with its process


def test_a_finished_folder_reused_with_other_flags_is_refused(tiny_dir, tmp_path):
    out = str(tmp_path / "run")
    train_gad.main(["--student", tiny_dir, "--out-dir", out, *TINY, "--mode", "gad"])
    before = open(os.path.join(out, "metrics.jsonl")).read()
    with pytest.raises(SystemExit, match=r"holds another run \(its flags differ: --seed 0 -> 1\)"):
        train_gad.main(["--student", tiny_dir, "--out-dir", out, *TINY, "--mode", "seqkd", "--seed", "1"])
    assert open(os.path.join(out, "metrics.jsonl")).read() == before
    train_gad.main(["--student", tiny_dir, "--out-dir", out, *TINY, "--mode", "seqkd"])   # the same run's other phase
    assert {r["stage"] for r in records(out)} == {"warmup", "gad", "seqkd"}


def test_resume_accepts_the_folder_spelled_differently_or_moved(tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_gad.main(["--student", tiny_dir, "--out-dir", str(out), *TINY])
    monkeypatch.chdir(tmp_path)
    for spelling in ("run/", "./run", str(out) + "/"):
        train_gad.main(["--student", tiny_dir, "--out-dir", spelling, *TINY, "--resume"])
    shutil.move(str(out), str(tmp_path / "moved"))
    train_gad.main(["--student", tiny_dir, "--out-dir", "moved", *TINY, "--resume"])


def test_tensorboard_shows_each_redone_step_once(tiny_dir, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = str(tmp_path / "run")
    flags = ["--student", tiny_dir, "--out-dir", out, "--report-to", "tensorboard", *TINY, "--gad-steps", "6",
             "--mode", "gad"]
    real, calls = train_gad.gad_step, {"n": 0}

    def crash_at_the_fourth(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("killed")
        return real(*a, **k)
    monkeypatch.setattr(train_gad, "gad_step", crash_at_the_fourth)
    with pytest.raises(RuntimeError):
        train_gad.main(flags)                                          # logged gad steps 2-4; resume point at 4
    monkeypatch.setattr(train_gad, "gad_step", real)
    train_gad.main(flags + ["--resume"])                               # redoes 4, 5, 6, 7
    events = EventAccumulator(os.path.join(out, "tensorboard", "gad"), size_guidance={"scalars": 0}).Reload()
    logged = [e.step for e in events.Scalars("gad/d_acc")]
    assert sorted(logged) == [r["step"] for r in records(out) if r["stage"] == "gad"] == [2, 3, 4, 5, 6, 7]
    final = {r["step"]: r["d_acc"] for r in records(out) if r["stage"] == "gad"}
    assert all(e.value == pytest.approx(final[e.step], abs=1e-6) for e in events.Scalars("gad/d_acc"))


def test_wandb_never_records_a_password_and_a_fresh_start_is_a_new_run(tiny_dir, tmp_path):
    pytest.importorskip("wandb")
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_PROJECT": "gad-test"}
    out = str(tmp_path / "run")
    cmd = [sys.executable, "train_gad.py", "--student", tiny_dir, "--out-dir", out, "--report-to", "wandb",
           "--teacher-base-url", "http://user:hunter2-secret@127.0.0.1:9/v1", *TINY, "--mode", "seqkd"]
    ids = []
    for extra in ([], ["--resume"], []):
        p = subprocess.run(cmd + extra, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        ids.append(open(os.path.join(out, "wandb_run_id.txt")).read().strip())
    assert ids[0] == ids[1] != ids[2]                                  # resume continues; a fresh start is new
    for folder, _, files in os.walk(out):
        for name in files:
            assert b"hunter2-secret" not in open(os.path.join(folder, name), "rb").read(), name


def test_counts_in_messages_agree_in_number():
    assert [checkpoint.processes(k) for k in (1, 2)] == ["1 process", "2 processes"]


def test_an_unwritable_out_dir_stops_before_anything_loads(tmp_path, monkeypatch):
    import builtins
    real = builtins.open

    def read_only(file, mode="r", *a, **k):  # root ignores chmod: a read-only mount is simulated
        if str(file).startswith(str(tmp_path)) and set(mode) & set("wa+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), file)
        return real(file, mode, *a, **k)
    monkeypatch.setattr(builtins, "open", read_only)
    monkeypatch.setattr(run, "starting_student", lambda *a: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit, match=r"cannot write to --out-dir .*run: Read-only file system"):
        train_gad.main(["--out-dir", str(tmp_path / "run"), *TINY])
