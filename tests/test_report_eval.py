"""report.py and eval.py on run folders as users have them (audit 3): older, ablated, real-model, torn, truncated or
damaged, unwritable. Each is a table or one line naming the file, never a traceback."""
import builtins
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import eval as E
import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED = {"fidelity": 0.8, "relevance": 0.9, "length": 7.0, "distinct_2": 0.3, "modes": 1.9, "ood_fidelity": 0.5,
            "ood_relevance": 0.7, "finished": 1.0}


def run_folder(path, ev, metrics):
    os.makedirs(path)
    with open(os.path.join(path, "eval.json"), "w") as f:
        json.dump(ev, f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in metrics)
    return str(path)


def test_summary_of_a_no_d_warmup_run(tmp_path):
    metrics = [{"stage": "warmup", "step": 0, "sft_loss": 2.0}, {"stage": "gad", "step": 1, "d_acc": 0.6, "kl": 0.01,
                                                                 "reward_group_std": 0.2}]
    d = run_folder(tmp_path / "a", {"gad": EMBEDDED, "teacher": EMBEDDED}, metrics)
    out = report.summarize([d])
    assert "d_acc - / 0.600" in out and "0.800 ± 0.000" in out and "(1 run:" in out


def test_summary_of_real_model_runs(tmp_path):
    real = {"length": 41.0, "distinct_2": 0.6, "finished": 0.9, "rouge_l": 0.2, "judge_score": None}
    dirs = [run_folder(tmp_path / x, {"before": real, "gad": {**real, "rouge_l": 0.3}, "teacher": real,
                                      "_config": {"test_data": "t.jsonl"}}, []) for x in "ab"]
    out = report.summarize(dirs)
    assert "| gad | 41.000 ± 0.000 | 0.600 ± 0.000 | 0.900 ± 0.000 | 0.300 ± 0.000 |" in out
    assert "judge_score" not in out and "(2 runs:" in out                 # null where no judge was asked


def test_a_torn_metrics_line_is_left_out_by_the_reports(tmp_path):
    d = run_folder(tmp_path / "a", {"gad": EMBEDDED}, [{"stage": "gad", "step": 0, "d_acc": 0.5}])
    with open(os.path.join(d, "metrics.jsonl"), "a") as f:
        f.write('{"stage": "gad", "st')
    assert report.stage_records(d, "gad") == [{"stage": "gad", "step": 0, "d_acc": 0.5}]
    assert "| " + d + " |" in report.compare([d])


@pytest.mark.parametrize("damage, needle", [
    (lambda d: open(os.path.join(d, "eval.json"), "w").write('{"gad": {"fidel'), "eval.json: cannot be read"),
    (lambda d: (os.remove(os.path.join(d, "eval.json")), os.makedirs(os.path.join(d, "eval.json"))),
     "eval.json is a folder"),
    (lambda d: open(os.path.join(d, "metrics.jsonl"), "w").write('{"a": 1}\n{oops\n{"b": 2}\n'),
     "metrics.jsonl: line 2 is not valid JSON"),
], ids=["truncated-eval", "eval-folder", "damaged-metrics"])
def test_report_on_damaged_files_is_one_line(tmp_path, damage, needle):
    d = run_folder(tmp_path / "a", {"gad": EMBEDDED}, [{"stage": "gad", "step": 0, "d_acc": 0.5}])
    damage(d)
    p = subprocess.run([sys.executable, "tools/report.py", "--summary", d], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and needle in p.stderr


@pytest.fixture
def model_run(tiny_dir, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(tiny_dir, d / "gad" / "generator")
    return str(d)


@pytest.mark.parametrize("damage, needle", [
    (lambda d: open(os.path.join(d, "config.json"), "w").write('{"world": "bogus"}'),
     "\"world\": 'bogus' is not one of default, long"),
    (lambda d: os.remove(os.path.join(d, "gad", "generator", "config.json")), "not a model folder (no config.json)"),
    (lambda d: open(os.path.join(d, "gad", "generator", "model.safetensors"), "r+b").truncate(1000),
     "cannot be loaded"),
    (lambda d: os.makedirs(os.path.join(d, "eval.json")), "eval.json is a folder"),
    (lambda d: open(os.path.join(d, "config.json"), "w").write('{"world": "def'), "config.json: cannot be read"),
    (lambda d: shutil.rmtree(os.path.join(d, "gad")), "no checkpoints in"),
], ids=["bogus-world", "no-config", "truncated-weights", "eval-json-folder", "torn-config", "no-checkpoints"])
def test_eval_on_damaged_folders_is_one_line(model_run, damage, needle):
    damage(model_run)
    with pytest.raises(SystemExit) as stop:                           # eval.py's main lets it through: one line
        E.evaluate(model_run, samples=1, log=lambda *a: None)
    assert needle in str(stop.value.code) and "\n" not in str(stop.value.code)


def test_eval_py_stops_in_one_line(model_run):
    shutil.rmtree(os.path.join(model_run, "gad"))
    p = subprocess.run([sys.executable, "eval.py", model_run], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode != 0 and p.stderr.strip().splitlines() == [f"eval.py: no checkpoints in {model_run} "
                                                                   "(expected before/generator, warmup/generator, "
                                                                   "seqkd/generator, gad/generator)"]


def test_eval_on_a_read_only_folder_stops_before_judging(model_run, monkeypatch):
    real = builtins.open

    def read_only(file, mode="r", *a, **k):  # root ignores chmod: a read-only mount is simulated
        if str(file).startswith(model_run) and set(mode) & set("wa+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), file)
        return real(file, mode, *a, **k)
    monkeypatch.setattr(builtins, "open", read_only)
    monkeypatch.setattr(E, "student_responses", lambda *a, **k: pytest.fail("sampled before checking the folder"))
    with pytest.raises(SystemExit, match="cannot write .*eval.json: Read-only file system"):
        E.evaluate(model_run, samples=1)


def test_eval_judge_errors_name_the_judge_flag(model_run, tmp_path):
    import teacher as T
    test = tmp_path / "t.jsonl"
    test.write_text('{"prompt": "hi"}\n')
    with pytest.raises(T.TeacherError, match="--judge 'bogus': expected") as error:
        E.evaluate_real(model_run, str(test), "bogus", log=lambda *a: None)
    assert "--teacher" not in str(error.value)


# ---------------------------------------------------------------------------- does D see? (issue: the blind D)
def test_auc_is_the_mann_whitney_statistic():
    import random
    rng = random.Random(0)
    pos = [rng.choice([0.1, 0.5, 0.9, 1.3]) for _ in range(40)]
    neg = [rng.choice([0.1, 0.5, 0.7]) for _ in range(30)]
    ranked = sorted([(x, 1) for x in pos] + [(x, 0) for x in neg])          # the rank-sum form, ties averaged
    ranks, i = {}, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        for k in range(i, j):
            ranks[k] = (i + j + 1) / 2
        i = j
    rank_sum = sum(ranks[k] for k, (_, label) in enumerate(ranked) if label)
    expected = (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
    assert E.auc(pos, neg) == pytest.approx(expected) and E.auc(pos, []) is None


class PlantedD(torch.nn.Module):
    """A discriminator that scores by the judge's verdict (sign +1), against it (-1), or not at all (0)."""

    def __init__(self, tok, sign):
        super().__init__()
        self.tok, self.sign = tok, sign

    def forward(self, batch):
        import world
        out = []
        for ids, resp, attn in zip(batch["input_ids"], batch["response_mask"].bool(), batch["attention_mask"].bool()):
            prompt = self.tok.decode(ids[attn & ~resp].tolist(), skip_special_tokens=True)
            answer = self.tok.decode(ids[resp].tolist(), skip_special_tokens=True).strip()
            valid = world.judge(world.topic_of([{"role": "user", "content": prompt}]), answer)["valid"]
            out.append(self.sign * float(valid))
        return torch.tensor(out)


@pytest.mark.parametrize("sign, expected", [(1, 1.0), (-1, 0.0), (0, 0.5)], ids=["sees", "inverted", "blind"])
def test_d_informativeness_tells_a_seeing_d_from_a_blind_one(sign, expected):
    """Checked against the judge: a D that scores validity has AUC 1, its opposite 0, a constant D 0.5."""
    import world
    from transformers import AutoModelForCausalLM
    tok = world.build_tokenizer()
    G = AutoModelForCausalLM.from_pretrained(world.SHIPPED_STUDENT)      # its samples: valid and invalid alike
    m = E.d_informativeness(PlantedD(tok, sign), G, tok, world.prompts("test")[:24], 4, 1.0, 40, seed=0)
    assert 0 < m["d_mixed_groups"] < 1
    assert m["d_auc"] == expected and m["d_group_rank_acc"] == expected
    # the teacher's answer is valid: it ties with every valid sample (not "above"), and beats the invalid ones only
    # when D scores validity up
    assert m["d_acc_valid"] == 0.0 and m["d_acc_invalid"] == (1.0 if sign == 1 else 0.0)


def test_summary_shows_whether_d_sees(tmp_path):
    ev = {"warmup": {**EMBEDDED, "d_auc": 0.42, "d_mixed_groups": 0.59}, "gad": {**EMBEDDED, "d_auc": 0.29,
                                                                                 "d_mixed_groups": 0.61}}
    d = run_folder(tmp_path / "a", ev, [{"stage": "gad", "step": 1, "d_acc": 0.6, "kl": 0.01, "reward_group_std": 0.2}])
    assert f"- {d}: d_auc 0.42 / 0.29, d_mixed_groups 0.59 / 0.61" in report.summarize([d])


@pytest.mark.parametrize("sign", [1, -1])
def test_judge_step_checks_each_steps_rewards_against_the_judge(sign):
    """Per training step: the share of valid samples, and D's scores of them (the rewards) against the judge."""
    import world
    from data import response_ids
    from teacher import EmbeddedTeacher
    tok = world.build_tokenizer()
    prompts = world.prompts("test")[:3]
    teacher = EmbeddedTeacher(seed=0)
    samples, valid = [], []
    for k, m in enumerate(prompts):
        for j in range(4):       # prompt 0: all valid; prompts 1, 2: two valid, two invalid
            ok = k == 0 or j < 2
            samples.append(response_ids(tok, teacher.respond(m)[0] if ok else "i do not know ."))
            valid.append(ok)
    scores = torch.tensor([sign * float(v) for v in valid])
    m = E.judge_step(prompts, samples, scores, 4, tok)
    assert m["judge_valid"] == pytest.approx(8 / 12) and m["judge_d_mixed_groups"] == pytest.approx(2 / 3)
    assert m["judge_d_auc"] == m["judge_d_group_rank_acc"] == (1.0 if sign == 1 else 0.0)
