"""experiments.py: every experiment in a seconds-long configuration writes the JSON it promises."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiments(*args):
    p = subprocess.run([sys.executable, "experiments.py", "--tiny", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


def records(folder):
    """metrics.jsonl without the wall-clock seconds."""
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in open(os.path.join(folder, "metrics.jsonl"))]


def test_all_experiments_tiny(tmp_path):
    out = str(tmp_path / "exp")
    log = experiments("all", "--seeds", "0", "--workers", "2", "--out", out).stdout
    running = [line.startswith("[experiments] start:") - line.startswith("[experiments] done") for line in log.splitlines()]
    assert max(sum(running[:i + 1]) for i in range(len(running))) == 2, log  # two jobs ran side by side
    res = {n: json.load(open(os.path.join(out, n + ".json"))) for n in
           ("table2", "quality_diversity", "warmup_ablation", "bt_vs_bce", "frozen_d", "mode_seeking")}
    assert all(r["tiny"] is True and r["seeds"] == [0] for r in res.values())
    t2 = res["table2"]["results"]
    assert set(t2) == {"before", "seqkd", "gad", "teacher"} and t2["teacher"]["fidelity"]["mean"] == 1.0
    assert set(res["warmup_ablation"]["results"]) == {"GAD", "w/o generator warmup", "w/o discriminator warmup", "SeqKD"}
    assert set(res["bt_vs_bce"]["results"]) == {"BT", "BCE"}
    qd = res["quality_diversity"]["results"]
    assert set(qd) == {"seqkd", "gad"} and len(qd["gad"]) == len(res["quality_diversity"]["temperatures"])
    curves = res["frozen_d"]["curves"]
    assert curves["frozen D"][0]["judge_fidelity"] and curves["co-evolving D"][0]["reward_mean"]
    for arm in ("frozen D", "co-evolving D"):  # both arms are judged during GAD, steps counted from GAD's start
        assert [s for s, _ in curves[arm][0]["judge_fidelity"]][:2] == [0, 2], curves[arm][0]
    ms = res["mode_seeking"]
    for k in ("seqkd", "gad"):
        assert abs(sum(ms["distributions"][k][0]) - 1) < 1e-4
    # the frozen discriminator really stayed frozen: no D updates were logged in that run
    recs = [json.loads(x) for x in open(os.path.join(out, "runs", "frozen_d", "seed0", "metrics.jsonl"))]
    assert recs and not any("d_grad_norm" in r for r in recs)
    summary = open(os.path.join(out, "summary.md")).read()
    assert summary.count("### ") == 6
    # a second call reuses every finished run
    assert "start:" not in experiments("all", "--seeds", "0", "--out", out).stdout
    # the numbers do not depend on --workers: one worker, one run at a time, gives the same bits
    out1 = str(tmp_path / "one_worker")
    experiments("table2", "--seeds", "0", "--workers", "1", "--out", out1)
    a, b = (os.path.join(o, "runs", "gad_seqkd", "seed0") for o in (out, out1))
    assert records(a) == records(b)
    assert json.load(open(os.path.join(a, "eval.json"))) == json.load(open(os.path.join(b, "eval.json")))

def test_declared_runs_and_their_dependencies(tmp_path, monkeypatch):
    """Every experiment declares its runs; a run depends on the runs whose folders it reads; a job whose input
    will be redone is redone too; finished jobs with the same flags are reused."""
    import experiments as X
    import jobs
    monkeypatch.setattr(X, "OUT", str(tmp_path))
    monkeypatch.setattr(jobs, "JOBS", {})
    runs = {name: declare([0, 1], False) for name, (declare, _) in X.EXPERIMENTS.items()}
    base0, base1 = runs["table2"]["base"]
    assert runs["warmup_ablation"]["GAD"] == runs["bt_vs_bce"]["BT"] == runs["frozen_d"]["co-evolving D"] == [base0, base1]
    train = [a for k, a in jobs.JOBS.values() if k == "train"]
    assert len(train) == 2 * 6 and all(a[4:4 + len(X.SUITE)] == X.SUITE for a in train)  # 6 runs per seed
    frozen0 = runs["frozen_d"]["frozen D"][0]
    d_run0 = os.path.join(str(tmp_path), "runs", "seqkd_discriminator", "seed0")
    assert jobs.dependencies(frozen0, jobs.JOBS[frozen0], jobs.JOBS) == {base0, d_run0}
    assert jobs.dependencies(d_run0, jobs.JOBS[d_run0], jobs.JOBS) == {base0}
    sweep0 = runs["quality_diversity"]["sweeps"][0]
    assert jobs.dependencies(sweep0, jobs.JOBS[sweep0], jobs.JOBS) == {base0}
    assert jobs.dependencies(base0, jobs.JOBS[base0], jobs.JOBS) == set()

    pending = jobs.to_do(X.start_folder(False), [])  # nothing done: every job, and the shared start that the embedded runs read
    assert set(pending) == set(jobs.JOBS) | {X.start_folder(False)}
    assert X.start_folder(False) in jobs.dependencies(base0, jobs.JOBS[base0], pending)
    assert X.start_folder(False) not in jobs.dependencies(d_run0, jobs.JOBS[d_run0], pending)  # it reads a --student

    done = set(jobs.JOBS) - {base1}  # everything finished except seed 1's base run: seed 1's readers are redone
    monkeypatch.setattr(jobs, "is_done", lambda p, j: p in done or p == X.start_folder(False))
    assert set(jobs.to_do(X.start_folder(False), [])) == {base1, os.path.join(base1, "temperature_sweep.json"),
                                   os.path.join(str(tmp_path), "runs", "seqkd_discriminator", "seed1"),
                                   os.path.join(str(tmp_path), "runs", "frozen_d", "seed1")}
