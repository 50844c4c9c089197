"""exercises/check.py's checks of exercise 5: one GAD step (train_gad.gad_step), in the paper's order.

The step's building blocks are replaced by recorders (what was called, in which order, with what); then a tiny
run trains with the learner's step alone and must learn."""
import json
import os
import tempfile
import types

import torch

from checking import expect


class Recorder:
    """Stand-ins for the step's building blocks: they record what was called, in which order, with what."""

    def __init__(self, update_D=True):
        self.calls, self.update_D = [], update_D
        self.teacher_scores = self.student_scores = self.advantages = self.d_loss = None

    def blocks(self, cfg):
        rec = self

        def sample(G, tok, prompts, n, temperature, max_new_tokens, gen_batch_size=64, eos_id=None):
            rec.calls.append("sample")
            expect(n == cfg.n_samples, f"sample got n={n}; sample cfg.n_samples={cfg.n_samples} responses per prompt")
            return [[3, 4, 1] for _ in range(len(prompts) * n)]

        def student_batch(batch, samples, n, pad_id):
            expect(samples is not None and len(samples) == len(batch.prompts) * n,
                   "student_batch needs this step's samples")
            return "s_batch"

        def d_scores(D_, batch, s_batch, cfg_, backward=True):
            expect("d_update" not in rec.calls, "D scored the samples after its update: the rewards are D's scores "
                   "*before* this step's update (Eq. 2)")
            expect(s_batch == "s_batch", "d_scores must score this step's samples (s_batch)")
            expect(backward == rec.update_D, f"d_scores(backward={backward}) when update_D={rec.update_D}: D's loss "
                   "must be back-propagated exactly when D is to be updated")
            rec.calls.append("d_scores")
            rec.teacher_scores = torch.zeros(cfg.batch_prompts)
            rec.student_scores = torch.arange(float(cfg.batch_prompts * cfg.n_samples))
            rec.d_loss = 0.69
            return rec.teacher_scores, rec.student_scores, rec.d_loss

        def group_advantages(rewards, n, eps=1e-6):
            rec.calls.append("advantages")
            expect(rewards is rec.student_scores, "the advantages must be computed from the rewards: d_scores' "
                   "scores of this step's samples, before D's update")
            expect(n == cfg.n_samples, f"group_advantages got n={n}; a group is the n_samples={cfg.n_samples} "
                   "samples of one prompt")
            rec.advantages = torch.zeros_like(rewards)
            return rec.advantages

        def d_update(D_, opt, teacher_scores, student_scores, loss, cfg_, step=True):
            rec.calls.append("d_update")
            expect(student_scores is rec.student_scores and teacher_scores is rec.teacher_scores and loss == rec.d_loss,
                   "d_update must get the teacher's and the samples' scores and D's loss of this step's d_scores")
            expect(step == rec.update_D, f"d_update(step={step}) when update_D={rec.update_D}: a frozen D "
                   "(--frozen-d) must not take an optimiser step")
            return {"d_loss": 0.69}

        def g_update(G, ref, opt, s_batch, advantages, cfg_):
            rec.calls.append("g_update")
            expect(advantages is rec.advantages, "g_update must get the group advantages of this step's rewards")
            expect(s_batch == "s_batch", "g_update trains on this step's samples (s_batch)")
            return {"kl": 0.0}

        return dict(sample=sample, student_batch=student_batch, group_advantages=group_advantages, d_scores=d_scores,
                    d_update=d_update, g_update=g_update, reward_metrics=lambda r, n: {"reward_mean": 0.0},
                    sample_metrics=lambda s, e: {"response_length": 2.0, "truncated": 0.0})


def run_step(f, update_D=True):
    cfg = types.SimpleNamespace(n_samples=4, batch_prompts=2, temperature=0.8, max_response_len=8, gen_batch_size=64,
                                d_steps=1)
    rec = Recorder(update_D)
    blocks = rec.blocks(cfg)
    g = types.FunctionType(f.__code__, {**f.__globals__, **blocks}, f.__name__, f.__defaults__, f.__closure__)
    batch = types.SimpleNamespace(idx=[0, 1], prompts=[[1, 2], [1, 3]], teacher="t_batch",
                                  teacher_for_d="t_batch_for_d")
    tok = types.SimpleNamespace(pad_token_id=0, eos_token_id=1)
    out = g(object(), object(), object(), object(), object(), tok, batch, cfg, update_D)
    expect(isinstance(out, tuple) and len(out) == 3 and isinstance(out[0], dict),
           f"return (metrics, samples, rewards); got {type(out).__name__}")
    return rec, out


LEARN_RUN = ["--mode", "gad", "--pretrain-steps", "300", "--batch-prompts", "8", "--n-samples", "4",
             "--warmup-steps", "20", "--d-only-steps", "20", "--gad-steps", "40",
             "--eval-samples", "2", "--eval-models", "before,gad", "--save-every", "0", "--log-every", "10",
             "--sample-every", "1000"]
LEARN_GAIN = 0.15  # the project's own step: 0.344 -> 0.625 here (exercises/ex5_gad_step.md); a step doing nothing: +0


def checks_5(f):
    def order():
        rec, (m, samples, rewards) = run_step(f)
        expect(rec.calls in (["sample", "d_scores", "advantages", "d_update", "g_update"],
                             ["sample", "d_scores", "d_update", "advantages", "g_update"]),
               f"a GAD step called {rec.calls}; expected sample -> d_scores (the rewards) -> advantages -> "
               "d_update -> g_update: the paper's order")
        expect(samples is not None and len(samples) == 8, "return this step's samples (the logger prints one)")
        expect(rewards is rec.student_scores, "return this step's rewards (the judge checks them against validity)")
        for k in ("reward_mean", "response_length", "kl"):
            expect(k in m, f"a GAD step's metrics should include {k} (the log shows it); got {sorted(m)}")

    def frozen():
        rec, _ = run_step(f, update_D=False)
        expect("d_update" in rec.calls, "with a frozen D the step still computes D's loss (its metrics are logged)")

    def learns():
        import train_gad
        out = tempfile.mkdtemp(prefix="ex5_")
        argv = ["--out-dir", out, *LEARN_RUN]
        print(f"      tiny run: python train_gad.py {' '.join(argv)}  (with your step; ~1 minute)", flush=True)
        saved = train_gad.gad_step
        train_gad.gad_step = f
        try:
            train_gad.main(argv)
        finally:
            train_gad.gad_step = saved
        ev = json.load(open(os.path.join(out, "eval.json")))
        before, after = ev["before"]["fidelity"], ev["gad"]["fidelity"]
        recs = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
        gad = [r for r in recs if r["stage"] == "gad"]
        print(f"      fidelity before {before:.3f} -> after GAD alone {after:.3f} (the warmup trained D only); "
              f"GAD steps logged: {len(gad)}; results in {out}")
        expect(len(gad) == 40 and all(r.get("reward_mean") is not None for r in gad),
               "every GAD step should log a reward")
        expect(after >= before + LEARN_GAIN, f"the tiny run did not learn: fidelity {before:.3f} -> {after:.3f} "
               f"(the project's own step gains more than {LEARN_GAIN} here, from GAD alone)")

    return [("GAD step order", order, "sample, then D's scores (= rewards, before D's update), advantages, "
             "d_update, g_update"),
            ("frozen D is not updated", frozen, "pass backward=update_D to d_scores and step=update_D to d_update"),
            ("a tiny run learns", learns, "compare your function with the lines given in the skeleton")]
