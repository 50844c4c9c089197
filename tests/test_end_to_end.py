"""Short end-to-end runs of train_gad.py and eval.py in a subprocess (fixed step counts, tiny settings)."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--pretrain-steps", "300", "--batch-prompts", "8", "--n-samples", "4", "--warmup-steps", "20",
        "--d-only-steps", "5", "--gad-steps", "20", "--eval-samples", "2", "--log-every", "10",
        "--sample-every", "10"]


def run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def gad_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    log = run("train_gad.py", "--out-dir", out, "--mode", "gad", *TINY)
    return out, log


def test_gad_moves_fidelity_up_and_keeps_relevance(gad_run):
    out, _ = gad_run
    ev = json.load(open(os.path.join(out, "eval.json")))
    assert ev["gad"]["fidelity"] >= ev["before"]["fidelity"] + 0.15, ev
    assert ev["gad"]["relevance"] >= ev["before"]["relevance"] - 0.1, ev
    assert ev["teacher"]["fidelity"] == 1.0


def test_contract_files(gad_run):
    out, log = gad_run
    assert os.listdir(os.path.join(os.path.dirname(out), ".teacher_cache"))   # shared by the runs beside it
    for name in ("metrics.jsonl", "eval.json", "config.json"):
        assert os.path.exists(os.path.join(out, name)), name
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(os.path.join(out, "gad", "generator"))     # plain HF load
    for stage in ("warmup", "gad"):
        assert os.path.exists(os.path.join(out, stage, "discriminator", "discriminator_head.pt"))
    ev = json.load(open(os.path.join(out, "eval.json")))
    for model in ("before", "warmup", "gad", "teacher"):
        for key in ("fidelity", "relevance", "length", "distinct_2", "ood_fidelity"):
            assert key in ev[model], (model, key)
            assert 0.0 <= ev[model]["fidelity"] <= 1.0
    for model in ("warmup", "gad"):                                 # D checked against the judge
        assert 0.0 <= ev[model]["d_mixed_groups"] <= 1.0 and "d_auc" in ev[model] and "d_acc_invalid" in ev[model]
    assert "d_auc" not in ev["before"] and "d_auc" not in ev["teacher"]
    recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["stage"] for r in recs] == ["warmup"] * 20 + ["gad"] * 20
    assert [r["step"] for r in recs] == list(range(40))
    for r in recs:                   # D's scores of each step's samples (GAD's rewards) checked against the judge
        assert 0.0 <= r["judge_valid"] <= 1.0 and 0.0 <= r["judge_d_mixed_groups"] <= 1.0 and "judge_d_auc" in r
    gad = recs[-1]
    for key in ("d_loss", "d_acc", "d_teacher_score", "d_student_score", "reward_mean", "reward_std", "kl",
                "entropy", "response_length", "g_grad_norm", "d_grad_norm", "seconds"):
        assert key in gad, key
    assert "sft_loss" not in recs[0] and "sft_loss" in recs[5]      # D alone for the first d_only_steps
    assert "student:" in log and "teacher:" in log                    # the sample triple is printed


def test_seqkd_mode_and_standalone_eval(gad_run):
    out, _ = gad_run
    log = run("train_gad.py", "--out-dir", out, "--mode", "seqkd", *TINY)
    assert "reusing the pretrained starting student" in log
    assert "0 teacher calls" in log                                   # the teacher cache was hit
    recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert sum(r["stage"] == "seqkd" for r in recs) == 40 and sum(r["stage"] == "gad" for r in recs) == 20
    os.remove(os.path.join(out, "eval.json"))
    log = run("eval.py", out, "--samples", "1")
    ev = json.load(open(os.path.join(out, "eval.json")))
    assert set(ev) >= {"before", "warmup", "seqkd", "gad", "teacher"}
    assert "fidelity" in log


class LengthD(torch.nn.Module):
    """A discriminator planted to score by length only (the whole row's: prompt + response)."""

    def forward(self, batch):
        return batch["attention_mask"].sum(-1).float()


def probe_small(out, **kw):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import probe
    return probe.probe(out, "gad", n=4, fresh_prompts=4, fresh_steps=5, test_prompts=24, log=lambda *a: None, **kw)


def test_probe_on_a_finished_run(gad_run):
    out, _ = gad_run
    r = probe_small(out)
    assert json.load(open(os.path.join(out, "probe_gad.json")))["verdict"] == r["verdict"]
    assert r["identical_text"] == 0.0                   # teacher rows and sample rows of one text score the same
    for k in ("d_auc", "d_auc_same_length", "corr_length", "corr_logp", "zero_variance_groups", "fresh_train_acc",
              "fresh_heldout_acc", "fresh_heldout_auc"):
        assert k in r, k
    assert r["verdict"] in ("sees", "blind", "inverted") and r["fresh_verdict"] in (
        "sees validity", "separates, not by validity", "memorises", "too weak")


def test_probe_reports_a_length_only_d_as_blind_and_a_validity_d_as_seeing(gad_run):
    from test_report_eval import PlantedD
    import world
    out, _ = gad_run
    r = probe_small(out, D=LengthD())
    assert r["d_auc_same_length"] == 0.5 and r["verdict"] == "blind"
    assert r["corr_length"] == pytest.approx(1.0)
    r = probe_small(out, D=PlantedD(world.build_tokenizer(), 1))
    assert r["d_auc"] == 1.0 and r["d_auc_same_length"] == 1.0 and r["verdict"] == "sees"
    assert r["d_auc_same_mode"] == 1.0 and all(m["broken"] in (None, 0.0) or m["mean_score"] < 1 for m in
                                               r["by_mode"].values())
    r = probe_small(out, D=ModeD(world.build_tokenizer()))     # knows the template, not its constraints
    assert r["d_auc_same_mode"] == 0.5 and abs(sum(m["teacher_share"] for m in r["by_mode"].values()) - 1) < 1e-9


class ModeD(torch.nn.Module):
    """A discriminator planted to score by the teacher template a response follows (its constraints aside)."""

    def __init__(self, tok):
        super().__init__()
        self.tok = tok

    def forward(self, batch):
        import probe
        import world
        out = []
        for ids, resp, attn in zip(batch["input_ids"], batch["response_mask"].bool(), batch["attention_mask"].bool()):
            topic = world.topic_of([{"role": "user", "content": self.tok.decode(ids[attn & ~resp].tolist())}])
            mode = probe.template_mode(topic, self.tok.decode(ids[resp].tolist(), skip_special_tokens=True).strip())
            out.append(float(list(world.TEACHER_MODES).index(mode)) if mode else -1.0)
        return torch.tensor(out)


def test_probe_identical_text_catches_the_eos_asymmetry(gad_run):
    """With --break-eos-symmetry D reads the teacher's rows without their EOS: the same text then scores differently."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import probe
    import train_gad
    import world
    from data import prompt_ids
    from discriminator import Discriminator
    from eval import load
    from generator import sample
    out, _ = gad_run
    tok, G = load(os.path.join(out, "gad", "generator"))
    D = Discriminator.from_pretrained(os.path.join(out, "gad", "discriminator")).eval()
    prompts = world.prompts("test")[:8]
    samples = sample(G, tok, [prompt_ids(tok, m) for m in prompts], 1, 1.0, 40)
    for broken in (False, True):
        flags = ["--config", os.path.join(out, "config.json"), "--out-dir", out] + ["--break-eos-symmetry"] * broken
        diff = probe.identical_text(D, tok, train_gad.parse_args(flags), prompts, samples)
        assert (diff > 1e-4) == broken, diff


def test_regime_summary_reads_the_criteria_off_a_run(gad_run):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import regime
    out, _ = gad_run
    s = regime.summary(out)
    ev = json.load(open(os.path.join(out, "eval.json")))
    assert s["warmup_d_auc"] == ev["warmup"]["d_auc"] and s["gad_fidelity"] == ev["gad"]["fidelity"]
    assert s["meets"] == [s["warmup_d_auc"] >= 0.8, s["d_acc_warmup_last22"] >= 0.6,
                          s["d_acc_gad_last44"] < s["d_acc_warmup_last22"]]
