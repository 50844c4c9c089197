"""The real-model path, offline: a local HF folder as student, a teacher over loopback HTTP, data files,
the --init-from hand-off across invocations, the judge protocol in eval.py, and no key in any written file."""
import json
import os

import pytest
import torch

import eval as E
import teacher as T
import train_gad
import world
from serve import TeacherServer

SECRET = "sk-test-NEVER-WRITE-ME-7777"
FAST = ["--batch-prompts", "2", "--n-samples", "2", "--warmup-steps", "2", "--d-only-steps", "1",
        "--gad-steps", "2", "--seqkd-steps", "2", "--max-response-len", "16", "--log-every", "1"]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def all_written_text(folder):
    out = []
    for root, _, files in os.walk(folder):
        for f in files:
            out.append(open(os.path.join(root, f), "rb").read())
    return b"\n".join(out)


def test_api_teacher_run_then_gad_from_warmup_then_judge(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    embedded = T.EmbeddedTeacher(seed=0)
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"content": m} for m in world.prompts("train")[:6]] + [{"prompt": "tell me about owls ."}])
    out = str(tmp_path / "run")
    with TeacherServer(embedded.respond, api_key=SECRET) as server:
        train_gad.main(["--student", tiny_dir, "--teacher", "openai:embedded-world", "--teacher-base-url", server.url,
                        "--prompts", prompts, "--out-dir", out, "--mode", "all", *FAST])
        assert server.served == 7
    recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["stage"] for r in recs] == ["warmup"] * 2 + ["gad"] * 2 + ["seqkd"] * 2
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(os.path.join(out, "gad", "generator"))

    # stage 2 in a second invocation, from the first run's warmup folder (no teacher calls: --teacher-data)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"content": m, "teacher_response": embedded.respond(m)[0]}
                                                   for m in world.prompts("train")[:6]])
    out2 = str(tmp_path / "run2")
    train_gad.main(["--student", tiny_dir, "--teacher-data", pairs, "--out-dir", out2, "--mode", "gad",
                    "--init-from", os.path.join(out, "warmup"), "--gradient-checkpointing", "--gen-batch-size", "2",
                    *FAST])
    recs = [json.loads(line) for line in open(os.path.join(out2, "metrics.jsonl"))]
    assert [r["stage"] for r in recs] == ["gad"] * 2
    assert recs[0]["kl"] == pytest.approx(0.0, abs=1e-6)   # the KL reference is the loaded warmup G itself
    warm = torch.load(os.path.join(out, "warmup", "discriminator", "discriminator_head.pt"), weights_only=True)
    same = torch.load(os.path.join(out2, "warmup", "discriminator", "discriminator_head.pt"), weights_only=True)
    assert torch.equal(warm["weight"], same["weight"])       # D's head came from the first run

    # the judge protocol on the first run, through the loopback server
    test = write_jsonl(tmp_path / "test.jsonl", [{"content": m, "teacher_response": embedded.respond(m)[0]}
                                                 for m in world.prompts("test")[:3]])
    judge = lambda messages, n: ["7 5\nok"] * n if "[Question]" in messages[-1]["content"] else ["ref"] * n
    with TeacherServer(judge, api_key=SECRET) as server:
        res = E.evaluate_real(out, test, "openai:judge", server.url, max_new_tokens=8, log=lambda *a: None)
    for name in ("before", "warmup", "gad", "seqkd", "teacher"):
        assert res[name]["judge_score"] == pytest.approx(50.0) and res[name]["judge_unparsed"] == 0
    assert 0.0 <= res["gad"]["rouge_l"] <= 1.0 and "ngram_4" in res["gad"]
    assert json.load(open(os.path.join(out, "eval.json")))["gad"]["judged"] == 3

    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    for folder in (out, out2):
        assert SECRET.encode() not in all_written_text(folder)


def test_student_without_chat_template_is_refused(tiny_dir, tmp_path):
    import shutil
    bare = str(tmp_path / "bare")
    shutil.copytree(tiny_dir, bare)
    cfg_path = os.path.join(bare, "tokenizer_config.json")
    cfg = json.load(open(cfg_path))
    cfg.pop("chat_template", None)
    json.dump(cfg, open(cfg_path, "w"))
    for f in os.listdir(bare):
        if f.startswith("chat_template"):
            os.remove(os.path.join(bare, f))
    with pytest.raises(SystemExit, match="has no chat template"):
        train_gad.main(["--student", bare, "--out-dir", str(tmp_path / "r"), *FAST])


def test_missing_student_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="model folder not found: ./no/such/model"):
        train_gad.main(["--student", "./no/such/model", "--out-dir", str(tmp_path / "r"), *FAST])


@pytest.mark.parametrize("flags, needle", [(["--lr-gad", "-1"], "--lr-gad must be >= 0"),
                                           (["--n-samples", "1"], "--n-samples must be >= 2"),
                                           (["--mode", "ppo"], "--mode must be")])
def test_invalid_flag_values(flags, needle, capsys):
    with pytest.raises(SystemExit):
        train_gad.parse_args(flags)
    assert needle in capsys.readouterr().err
