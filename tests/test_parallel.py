"""torchrun + FSDP2 (parallel.py) on CPU with the gloo backend: two processes take the same step as one, and a
two-process run trains end to end and resumes after a SIGKILL to the same metrics as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import checkpoint
import parallel
from conftest import assert_same_run, run_metrics
from data import Batch, pack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONFAULTHANDLER": "1"}  # a crash in a worker prints its Python stack
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def run_step(tmp_path, tiny_dir, flags, bf16=False):
    out = {}
    for name, launcher in (("one", [sys.executable]), ("two", TORCHRUN)):
        env = {**ENV, "GAD_FSDP_BF16": "1"} if bf16 and name == "two" else ENV
        p = subprocess.run(launcher + ["tests/dist_step.py", tiny_dir, str(tmp_path / f"{name}.pt"), *flags],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        out[name] = torch.load(tmp_path / f"{name}.pt", weights_only=True)
    assert (out["one"]["processes"], out["two"]["processes"]) == (1, 2)
    return out


@pytest.mark.parametrize("flags", [[], ["--lean", "--gradient-checkpointing"]], ids=["full-logits", "lean-logprobs"])
def test_two_processes_take_the_same_step_as_one(tiny_dir, tmp_path, flags):
    """One warmup step then one GAD step (micro-batches of 3 rows, rows of 1 to 12 sampled tokens) on the same
    injected rollouts: losses, metrics and the updated weights of G and D agree within 1e-5."""
    out = run_step(tmp_path, tiny_dir, flags)
    for m1, m2 in zip(out["one"]["metrics"], out["two"]["metrics"]):
        assert m1.keys() == m2.keys()
        for k, v in m1.items():
            assert m2[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert "pg_loss" in out["one"]["metrics"][1] and "sft_loss" in out["one"]["metrics"][0]
    for player in ("G", "D"):
        w1, w2 = out["one"]["weights"][player], out["two"]["weights"][player]
        assert w1.keys() == w2.keys()
        moved = max((w1[k] - load).abs().max().item() for k, load in _start(tiny_dir, player).items() if k in w1)
        assert moved > 1e-4                                   # the step changed the weights ...
        for k in w1:                                          # ... and both process counts changed them alike
            assert torch.allclose(w1[k], w2[k], atol=1e-5), (player, k)


def test_bf16_compute_under_fsdp_stays_close_and_keeps_fp32_weights(tiny_dir, tmp_path):
    """The GPU setting (MixedPrecisionPolicy: bf16 gathers and compute, fp32 shards and gradient reduction), forced
    on CPU: every metric within 2% of the fp32 one-process step, and the saved weights stay fp32."""
    out = run_step(tmp_path, tiny_dir, [], bf16=True)
    moved = 0.0
    for m1, m2 in zip(out["one"]["metrics"], out["two"]["metrics"]):
        for k, v in m1.items():
            assert m2[k] == pytest.approx(v, rel=2e-2, abs=2e-3), k
            moved = max(moved, abs(m2[k] - v) / max(abs(v), 1e-3))
    assert moved > 1e-4   # bf16 was really in effect (fp32 agrees within 1e-5, the test above)
    for player in ("G", "D"):
        assert {w.dtype for w in out["two"]["weights"][player].values()} == {torch.float32}


def _start(tiny_dir, player):
    w = load_file(os.path.join(tiny_dir, "model.safetensors"))
    return w if player == "G" else {"backbone." + k[len("model."):]: v for k, v in w.items() if k.startswith("model.")}


RUN = ["--batch-prompts", "4", "--n-samples", "2", "--warmup-steps", "3", "--d-only-steps", "1", "--gad-steps", "8",
       "--seqkd-steps", "3", "--max-response-len", "12", "--save-every", "4", "--log-every", "1000",
       "--eval-models", ""]


def test_torchrun_trains_end_to_end_and_resumes_after_sigkill(tiny_dir, tmp_path):
    a, b = str(tmp_path / "straight"), str(tmp_path / "killed")
    base = TORCHRUN + ["train_gad.py", "--student", tiny_dir, *RUN]
    p = subprocess.run(base + ["--out-dir", a], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for folder in ("warmup/generator", "warmup/discriminator", "gad/generator", "gad/discriminator",
                   "seqkd/generator"):
        assert os.path.exists(os.path.join(a, folder, "model.safetensors")), folder
    assert os.path.exists(os.path.join(a, "gad", "discriminator", "discriminator_head.pt"))
    assert json.load(open(os.path.join(a, "config.json")))["batch_prompts"] == 4
    recs = run_metrics(a)
    assert [r["step"] for r in recs if r["stage"] in ("warmup", "gad")] == list(range(11))  # one line per step
    assert p.stdout.count("[teacher] 1408 prompts") == 1  # rank 0 logs (and asks the teacher); the other reads

    # the whole job (torchrun and its two workers) killed at once, as when a machine dies
    proc = subprocess.Popen(base + ["--out-dir", b], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    path, deadline = os.path.join(b, "metrics.jsonl"), time.time() + 300
    while time.time() < deadline:  # step 9 logged: past the resume point at step 8 (a half-written line is skipped)
        if os.path.exists(path) and any(r.get("step", -1) >= 9 for r in checkpoint.read_jsonl(path)):
            break
        time.sleep(0.005)
    for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun starts its workers in their own sessions
        os.kill(pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(os.path.join(b, "gad", "generator"))
    assert json.load(open(os.path.join(b, "resume", "latest.json")))["next_step"] == 8

    out = subprocess.run(base + ["--out-dir", b, "--resume"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[resume] continuing at gad step 8" in out.stdout + out.stderr
    assert_same_run(a, b, ("gad/generator", "gad/discriminator", "seqkd/generator"), atol=1e-6)


def descendants(pid):
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [pid]
    while frontier:
        kids = [c for c, p in parents.items() if p in frontier]
        found, frontier = found + kids, kids
    return found


def test_each_rank_takes_whole_prompt_groups(monkeypatch):
    prompts = [[5] * k for k in (1, 2, 3, 4)]
    teacher = pack(prompts, [[7] * k for k in (2, 1, 2, 4)], 0)  # rows of 3, 3, 5 and 8 tokens
    batch = Batch([10, 11, 12, 13], prompts, teacher, teacher)
    monkeypatch.setattr(parallel, "processes", lambda: 2)
    parts = []
    for r in (0, 1):
        monkeypatch.setattr(parallel, "rank", lambda r=r: r)
        parts.append(parallel.local(batch))
    assert [p.idx for p in parts] == [[10, 11], [12, 13]]
    assert [p.prompts for p in parts] == [prompts[:2], prompts[2:]]
    for p, rows in zip(parts, (slice(0, 2), slice(2, 4))):   # the same rows, cut to their own longest
        width = int(teacher["attention_mask"][rows].sum(-1).max())
        assert p.teacher["input_ids"].shape[1] == width == (3 if rows.start == 0 else 8)
        assert torch.equal(p.teacher["input_ids"], teacher["input_ids"][rows, :width])
    with pytest.raises(SystemExit, match="--batch-prompts 5 must be a multiple of the 2 torchrun processes"):
        parallel.check(5)


def test_resume_point_of_another_process_count_is_refused(tmp_path, monkeypatch):
    (tmp_path / "p").mkdir()
    torch.save({"processes": 2}, tmp_path / "p" / "state.pt")
    with pytest.raises(SystemExit, match="written by 2 processes; resume it with as many .this run has 1."):
        checkpoint.restore_state({"dir": str(tmp_path / "p")}, None)


# ---------------------------------------------------------------------------- ranks that must agree (audit 3)
def test_every_rank_trains_on_rank_0s_answers_and_only_rank_0_pays(tiny_dir, tmp_path):
    """Five prompts get an empty answer three times (recorded as empty, asked again only by a later run); the fourth
    ask would answer. Rank 0 alone asks: 40 + 5 x 2 calls, and rank 1 does not ask those five again."""
    import teacher as T
    import world
    from serve import TeacherServer
    prompts = world.prompts("train")[:40]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"content": m}) + "\n" for m in prompts))
    flaky, calls, embedded = [json.dumps(m) for m in prompts[:5]], {}, T.EmbeddedTeacher(seed=0)

    def respond(messages, n):
        key = json.dumps(messages)
        calls[key] = calls.get(key, 0) + 1
        return [""] * n if key in flaky and calls[key] <= 3 else embedded.respond(messages, n)
    with TeacherServer(respond) as server:
        p = subprocess.run(TORCHRUN + ["train_gad.py", "--student", tiny_dir, "--teacher", "openai:m",
                                       "--teacher-base-url", server.url, "--prompts", str(f), "--mode", "gad",
                                       "--out-dir", str(tmp_path / "run"), *RUN],
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        assert server.served == 40 + 5 * 2
    assert "5 of 40 answers empty" in p.stdout + p.stderr


RANKED = "import os, sys\nsys.path.insert(0, {root!r})\nimport train_gad\n" \
         "train_gad.main(sys.argv[1:] + ['--seed', os.environ['RANK']])\n"


def test_ranks_started_with_other_flags_stop_in_one_line_instead_of_hanging(tiny_dir, tmp_path):
    script = tmp_path / "ranked.py"
    script.write_text(RANKED.format(root=ROOT))
    p = subprocess.run(TORCHRUN + [str(script), "--student", tiny_dir, "--out-dir", str(tmp_path / "run"), *RUN],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert p.returncode != 0
    assert "torchrun process 1 has other flags than process 0 (--seed 0 -> 1)" in p.stderr
    assert not os.path.exists(tmp_path / "run" / "config.json")
