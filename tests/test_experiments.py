"""tools/experiments.py: every experiment in a seconds-long configuration writes the JSON it promises."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiments(*args):
    p = subprocess.run([sys.executable, "tools/experiments.py", "--tiny", *args], cwd=ROOT, capture_output=True,
                       text=True,
                       timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


def records(folder):
    """metrics.jsonl without the wall-clock seconds."""
    lines = open(os.path.join(folder, "metrics.jsonl"))
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]


def test_all_experiments_tiny(tmp_path):
    out = str(tmp_path / "exp")
    log = experiments("all", "--seeds", "0", "--workers", "2", "--out", out).stdout
    running = [line.startswith("[experiments] start:") - line.startswith("[experiments] done")
               for line in log.splitlines()]
    assert max(sum(running[:i + 1]) for i in range(len(running))) == 2, log  # two jobs ran side by side
    res = {n: json.load(open(os.path.join(out, n + ".json"))) for n in
           ("table2", "quality_diversity", "warmup_ablation", "bt_vs_bce", "frozen_d", "mode_seeking")}
    assert all(r["tiny"] is True and r["seeds"] == [0] for r in res.values())
    t2 = res["table2"]["results"]
    assert set(t2) == {"before", "seqkd", "gad", "teacher"} and t2["teacher"]["fidelity"]["mean"] == 1.0
    assert set(res["warmup_ablation"]["results"]) == {"GAD", "w/o generator warmup", "w/o discriminator warmup",
                                                      "SeqKD"}
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
    runs = {name: X.EXPERIMENTS[name][0]([0, 1], False) for name in X.PAPER_EXPERIMENTS}  # what `all` runs
    base0, base1 = runs["table2"]["base"]
    assert runs["warmup_ablation"]["GAD"] == runs["bt_vs_bce"]["BT"] == runs["frozen_d"]["co-evolving D"] \
        == [base0, base1]
    train = [a for k, a in jobs.JOBS.values() if k == "train"]
    assert len(train) == 2 * 6 and all(a[4:4 + len(X.SUITE)] == X.SUITE for a in train)  # 6 runs per seed
    frozen0 = runs["frozen_d"]["frozen D"][0]
    d_run0 = os.path.join(str(tmp_path), "runs", "seqkd_discriminator", "seed0")
    assert jobs.dependencies(frozen0, jobs.JOBS[frozen0], jobs.JOBS) == {base0, d_run0}
    assert jobs.dependencies(d_run0, jobs.JOBS[d_run0], jobs.JOBS) == {base0}
    sweep0 = runs["quality_diversity"]["sweeps"][0]
    assert jobs.dependencies(sweep0, jobs.JOBS[sweep0], jobs.JOBS) == {base0}
    assert jobs.dependencies(base0, jobs.JOBS[base0], jobs.JOBS) == set()

    pending = jobs.to_do(X.start_folder(False), [])  # nothing done: every job, and the shared start the runs read
    assert set(pending) == set(jobs.JOBS) | {X.start_folder(False)}
    assert X.start_folder(False) in jobs.dependencies(base0, jobs.JOBS[base0], pending)
    assert X.start_folder(False) not in jobs.dependencies(d_run0, jobs.JOBS[d_run0], pending)  # it reads a --student

    done = set(jobs.JOBS) - {base1}  # everything finished except seed 1's base run: seed 1's readers are redone
    monkeypatch.setattr(jobs, "is_done", lambda p, j: p in done or p == X.start_folder(False))
    assert set(jobs.to_do(X.start_folder(False), [])) == {base1, os.path.join(base1, "temperature_sweep.json"),
                                   os.path.join(str(tmp_path), "runs", "seqkd_discriminator", "seed1"),
                                   os.path.join(str(tmp_path), "runs", "frozen_d", "seed1")}


# ---------------------------------------------------------------------------- where_gad_helps (pre-registered)
def test_beats_is_the_preregistered_two_pooled_std_rule():
    import study as X
    margin, threshold, ok = X.beats([0.90, 0.92, 0.94], [0.80, 0.82, 0.84])
    assert abs(margin - 0.10) < 1e-12 and abs(threshold - 0.04) < 1e-12 and ok      # sd 0.02 each: 2 x 0.02
    assert not X.beats([0.90, 0.92, 0.94], [0.87, 0.89, 0.91])[2]                     # +0.03 <= 0.04
    assert not X.beats([0.80, 0.82, 0.84], [0.90, 0.92, 0.94])[2]                     # GAD behind
    margin, threshold, ok = X.beats([0.5, 0.9], [0.6, 0.6])                           # a noisy GAD, ahead on
    assert abs(threshold - 0.4) < 1e-12 and abs(margin - 0.1) < 1e-12 and not ok      # average: not enough


def test_held_out_seeds_run_only_for_candidates(monkeypatch):
    """The search decides which settings get held-out seeds; a candidate that fails there is not confirmed."""
    import study as X
    declared, trained = [], []

    def numbers(runs):  # b passes on its search seeds and fails on held-out ones; d passes both; the rest fail
        name, seeds = runs[0]["run"], [r["seed"] for r in runs]
        good = name == "d_long_answers" or (name == "b_weak_warmup" and seeds == [0, 1, 2])
        return {m: {"gad_beats_both": good and m == "ood_fidelity"} for m in X.STUDY_METRICS}
    monkeypatch.setattr(X, "study_numbers", numbers)
    monkeypatch.setattr(X, "study_run", lambda root, name, seed, tiny_flags, *_: declared.append((name, seed)) or
                        {"run": name, "seed": seed})
    monkeypatch.setattr(X, "study_markdown", lambda r: "")
    runs = {n: [{"run": n, "seed": s} for s in (0, 1, 2)] for n in X.STUDY}
    result, _, _ = X.analyse(runs, [0, 1, 2], "out", [], lambda: trained.append(list(declared)))
    assert sorted(declared) == sorted((n, s) for n in ("b_weak_warmup", "d_long_answers") for s in (3, 4, 5))
    assert len(trained) == 1 and trained[0] == declared                     # trained once, after the search
    verdicts = {n: r["verdict"] for n, r in result["settings"].items()}
    assert verdicts["d_long_answers"] == "helps (ood_fidelity)"
    assert verdicts["b_weak_warmup"] == "candidate, not confirmed on held-out seeds"
    assert {v for n, v in verdicts.items() if n not in ("b_weak_warmup", "d_long_answers")} == {"does not help"}


def test_where_gad_helps_tiny_with_its_own_students(tmp_path, monkeypatch):
    """Three settings of the study, end to end in a tiny configuration: the default, a smaller student and the
    long-answer world (each pretrains its own starting student once); tuned SeqKD picks from the validation split."""
    import experiments as X
    import study
    monkeypatch.setattr(study, "STUDY", {k: study.STUDY[k] for k in ("default", "c_small_student", "d_long_answers")})
    monkeypatch.setattr(X.jobs, "JOBS", {})
    out = str(tmp_path / "exp")
    X.main(["where_gad_helps", "--tiny", "--seeds", "0", "--workers", "2", "--out", out])
    res = json.load(open(os.path.join(out, "where_gad_helps.json")))
    assert set(res["settings"]) == {"default", "c_small_student", "d_long_answers"} and res["search_seeds"] == [0]
    for name, r in res["settings"].items():
        s = r["search"]
        assert s["tuned_temperature"][0] in study.VAL_TEMPERATURES and len(s["fidelity"]["gad"]) == 1
        assert r["verdict"] in ("does not help", "candidate, not confirmed on held-out seeds") or \
            r["verdict"].startswith("helps")
        assert (r["held_out"] is not None) == bool(r["candidate_on"])
    runs = os.path.join(out, "runs")
    small = json.load(open(os.path.join(runs, "study_c_small_student", "seed0", "before", "generator", "config.json")))
    assert (small["hidden_size"], small["num_hidden_layers"]) == (64, 2)
    long_run = os.path.join(runs, "study_d_long_answers", "seed0")
    assert json.load(open(os.path.join(long_run, "config.json")))["world"] == "long"
    ev = json.load(open(os.path.join(long_run, "eval.json")))
    assert ev["teacher"]["fidelity"] == 1.0 and ev["teacher"]["length"] > 15   # judged by the long world's rules
    tuned = json.load(open(os.path.join(long_run, "tuned_seqkd.json")))
    assert set(tuned["val_fidelity"]) == {str(t) for t in study.VAL_TEMPERATURES}
