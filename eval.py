"""Judge a run's students (and the teacher) and write eval.json. (Summaries across runs: tools/report.py.)

    python eval.py runs/default            # embedded world: the privileged judge on held-out prompts
    python eval.py runs/qwen --test-data lmsys_test.parquet --judge openai:gpt-4o   # real models (the paper's judge)

Real models (--test-data): greedy answers to the test prompts, then
  judge_score  the paper's protocol: the judge writes a reference answer, then rates the student's answer
               and the reference 1-10 in both orders; per prompt 100 * s / (s + r), s and r averaged over
               the two orders (this cancels position bias); ~50 = as good as the judge's own answer.
               Replies whose scores cannot be read are counted (judge_unparsed) and not scored.
  rouge_l, ngram_1..4   overlap with the test file's teacher_response (diagnostics only: the paper finds
               SeqKD higher on overlap yet lower on the judge)
  length, distinct_2, finished

Metrics per model, on the in-domain "test" prompts (never in teacher data; their topics are), and
again with an "ood_" prefix on the out-of-domain topics (never in teacher data at all):
  fidelity    fraction of responses inside the teacher's support for their prompt (world.judge); in
              [0, 1], higher = more teacher-like. The teacher itself scores 1.0 by construction.
  relevance   fraction of responses that mention the prompt's topic and no other topic
  length      mean response length in words (EOS not counted)
  distinct_2  unique bigrams / all bigrams over all responses (diversity; repetition lowers it)
  finished    fraction of responses that ended with EOS (the rest hit the length limit)
  modes       mean number of distinct teacher modes among one prompt's valid samples (max 3)
"""
import argparse
import os
import re
import statistics
import sys
from collections import Counter

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import world
from checkpoint import read_json, write_json
from data import DataError, load_records, pack, prompt_ids, response_ids
from discriminator import Discriminator
from generator import finished, sample
from teacher import EmbeddedTeacher, TeacherCache, TeacherError, collect, make_teacher

MODELS = ["before", "warmup", "seqkd", "gad"]  # checkpoint folders of a run, in table order


def judge_responses(prompts, responses, n):
    """prompts [P] chat messages; responses [P*n] strings grouped by prompt -> metrics dict."""
    verdicts = [world.judge(world.topic_of(prompts[i // n]), r) for i, r in enumerate(responses)]
    modes = [len({v["mode"] for v in verdicts[i:i + n] if v["mode"]}) for i in range(0, len(verdicts), n)]
    return {"fidelity": sum(v["valid"] for v in verdicts) / len(verdicts),
            "relevance": sum(v["relevant"] for v in verdicts) / len(verdicts),
            "length": sum(v["length"] for v in verdicts) / len(verdicts),
            "distinct_2": world.distinct_n(responses, 2),
            "modes": sum(modes) / len(modes)}


def student_responses(model, tokenizer, prompts, n, temperature, max_new_tokens, gen_batch_size=64):
    ids = sample(model, tokenizer, [prompt_ids(tokenizer, m) for m in prompts], n, temperature, max_new_tokens,
                   gen_batch_size)
    texts = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]
    return texts, sum(finished(r, tokenizer.eos_token_id) for r in ids) / len(ids)


def sample_and_judge(model, tokenizer, prompts, samples, temperature, max_new_tokens=40, seed=None):
    """(the judge's metrics, the texts) of `samples` answers per prompt sampled at `temperature` (0 = greedy),
    after torch.manual_seed(seed) when a seed is given."""
    if seed is not None:
        torch.manual_seed(seed)
    texts, fin = student_responses(model, tokenizer, prompts, samples, temperature, max_new_tokens)
    return {**judge_responses(prompts, texts, samples), "finished": fin}, texts


def checkpoint_folder(run_dir, name):
    """The generator folder of a run's model; 'before' may be a --student folder given by path."""
    path = os.path.join(run_dir, name, "generator")
    if os.path.isdir(path):
        return path
    config = os.path.join(run_dir, "config.json")
    if name == "before" and os.path.exists(config):
        student = read_json(config).get("student")
        if student and student != "embedded" and os.path.isdir(student):
            return student
    return None


def load(path, dtype=torch.float32, device="cpu"):
    """(tokenizer, model) of a checkpoint folder, or a one-line error naming it (no config.json, damaged weights)."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise SystemExit(f"eval.py: {path}: not a model folder (no config.json)")
    try:
        return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    except Exception as e:  # noqa: BLE001 -- truncated or damaged weights fail deep inside safetensors / transformers
        raise SystemExit(f"eval.py: {path}: cannot be loaded ({type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0][:120]})") from None


def writable(path):
    """A one-line error now if path (a file to write at the end) cannot be written: a folder, or a read-only place."""
    if os.path.isdir(path):
        raise SystemExit(f"eval.py: {path} is a folder; move it away")
    probe = f"{path}.probe{os.getpid()}"
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise SystemExit(f"eval.py: cannot write {path}: {e.strerror}") from None


def evaluate(run_dir, samples=4, temperature=0.8, max_new_tokens=40, seed=0, log=print, models=MODELS):
    """Judge every checkpoint of `models` found in run_dir plus the teacher; write run_dir/eval.json atomically.

    Main metrics are on the in-domain "test" prompts; the same metrics on the out-of-domain topics
    are stored with an "ood_" prefix. The run's world variant (config.json's "world") is judged by its own rules."""
    config = os.path.join(run_dir, "config.json")
    name = read_json(config).get("world", "default") if os.path.exists(config) else "default"
    if name not in world.WORLDS:
        raise SystemExit(f"eval.py: {config}: \"world\": {str(name)[:40]!r} is not one of {', '.join(world.WORLDS)}")
    world.use(name)
    found = [(m, path) for m in models if (path := checkpoint_folder(run_dir, m))]
    if models and not found:
        expected = ", ".join(m + "/generator" for m in models)
        raise SystemExit(f"eval.py: no checkpoints in {run_dir} (expected {expected})")
    writable(os.path.join(run_dir, "eval.json"))  # before minutes of sampling, not after
    splits = {"": world.prompts("test"), "ood_": world.prompts("ood")}
    results = {}
    examples = {}
    for name, path in found:
        tok, model = load(path)
        results[name] = {}
        for prefix, prompts in splits.items():
            m, texts = sample_and_judge(model, tok, prompts, samples, temperature, max_new_tokens, seed)
            results[name].update({prefix + k: v for k, v in m.items()})
            examples.setdefault(prefix, {})[name] = texts[::samples]
        if os.path.isdir(os.path.join(run_dir, name, "discriminator")):  # does this checkpoint's D see validity?
            D = Discriminator.from_pretrained(os.path.join(run_dir, name, "discriminator")).eval()
            results[name].update(d_informativeness(D, model, tok, splits[""], 2 * samples, temperature,
                                                   max_new_tokens, seed))  # 8 per prompt by default
    teacher = EmbeddedTeacher(seed=seed + 12345)  # fresh teacher samples, not the training data
    results["teacher"] = {}
    for prefix, prompts in splits.items():
        texts = [r for m in prompts for r in teacher.respond(m, samples)]
        m = {**judge_responses(prompts, texts, samples), "finished": 1.0}
        results["teacher"].update({prefix + k: v for k, v in m.items()})
        examples.setdefault(prefix, {})["teacher"] = texts[::samples]
    results["_config"] = {"samples_per_prompt": samples, "temperature": temperature, "seed": seed,
                          "prompts": {"test": len(splits[""]), "ood": len(splits["ood_"])}}
    write_json(os.path.join(run_dir, "eval.json"), results)  # temp file, then rename
    log("In-domain test prompts:\n" + format_table(results) + "\n\nOut-of-domain topics:\n"
        + format_table(results, "ood_"))
    for prefix, prompts in splits.items():
        log(f"\nSample responses ({'out-of-domain' if prefix else 'test'} prompts):")
        for i in range(0, len(prompts), max(1, len(prompts) // 2)):
            log(f"  prompt : {prompts[i][-1]['content']}")
            for name, ex in examples[prefix].items():
                log(f"  {name:>8}: {ex[i]}")
    return results


# ---------------------------------------------------------------------------- does D see? (evaluation only)
def auc(positives, negatives):
    """P(a positive scores above a negative), ties counting 1/2 (Mann-Whitney); None unless both exist."""
    if not positives or not negatives:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in positives for q in negatives)
    return wins / (len(positives) * len(negatives))


def d_informativeness(D, G, tok, prompts, n, temperature, max_new_tokens, seed=0, samples=None):
    """D checked against the world's judge on n fresh samples of G per prompt (evaluation only, never trained on):
      d_auc             AUC of D's score, valid over invalid samples (0.5: D is blind to validity; < 0.5: its
                        reward pushes toward invalid answers)
      d_group_rank_acc  inside the groups that hold both, the share of (valid, invalid) pairs D ranks right
      d_mixed_groups    the share of prompts whose n samples hold both (only those give GRPO a validity signal)
      d_acc_valid / d_acc_invalid   D's pair accuracy (a fresh teacher answer above the sample), by validity"""
    torch.manual_seed(seed)
    ids = [prompt_ids(tok, m) for m in prompts]
    samples = samples or sample(G, tok, ids, n, temperature, max_new_tokens)  # (or the caller's, drawn so)
    valid = judged_valid(prompts, samples, n, tok)
    teacher = EmbeddedTeacher(seed=seed + 54321)
    answers = [response_ids(tok, teacher.respond(m)[0]) for m in prompts]
    with torch.no_grad():
        scores = torch.cat([D(pack([p for p in ids[i:i + 32] for _ in range(n)], samples[i * n:(i + 32) * n],
                                   tok.pad_token_id)) for i in range(0, len(ids), 32)]).tolist()
        teacher_scores = torch.cat([D(pack(ids[i:i + 32], answers[i:i + 32], tok.pad_token_id))
                                    for i in range(0, len(ids), 32)]).tolist()
    beaten = [teacher_scores[i // n] > s for i, s in enumerate(scores)]
    return ranking_metrics(scores, valid, n, "d_") | {"d_acc_valid": share([b for b, v in zip(beaten, valid) if v]),
                                                      "d_acc_invalid": share([b for b, v in zip(beaten, valid)
                                                                              if not v])}


def judged_valid(prompts, samples, n, tok):
    """The judge's verdict on each sample (token ids; sample i answers prompts[i // n], chat messages)."""
    return [world.judge(world.topic_of(prompts[i // n]), tok.decode(s, skip_special_tokens=True).strip())["valid"]
            for i, s in enumerate(samples)]


def ranking_metrics(scores, valid, n, prefix):
    """Scores [B*n] (groups of n) against the judge's valid/invalid labels: <prefix>auc, <prefix>group_rank_acc
    (inside the groups that hold both), <prefix>mixed_groups (the share of groups that hold both)."""
    groups = [(scores[i:i + n], valid[i:i + n]) for i in range(0, len(scores), n)]
    mixed = [g for g in groups if any(g[1]) and not all(g[1])]
    sides = [([s for s, v in zip(*g) if v], [s for s, v in zip(*g) if not v]) for g in mixed]   # (valid, invalid)
    pairs = sum(len(good) * len(bad) for good, bad in sides)
    return {prefix + "auc": auc([s for s, v in zip(scores, valid) if v], [s for s, v in zip(scores, valid) if not v]),
            prefix + "group_rank_acc": sum(auc(*s) * len(s[0]) * len(s[1]) for s in sides) / pairs if pairs else None,
            prefix + "mixed_groups": len(mixed) / len(groups)}


def judge_step(prompts, samples, scores, n, tok):
    """Per training step (evaluation only): the share of valid samples; D's scores of them (the rewards), judged."""
    valid = judged_valid(prompts, samples, n, tok)
    return {"judge_valid": share(valid)} | ranking_metrics(scores.tolist(), valid, n, "judge_d_")


def share(flags):
    return sum(flags) / len(flags) if flags else None


def format_table(results, prefix=""):
    cols = ["fidelity", "relevance", "length", "distinct_2", "finished", "modes"]
    lines = [f"{'model':<10}" + "".join(f"{c:>12}" for c in cols)]
    for name, m in results.items():
        if not name.startswith("_"):
            lines.append(f"{name:<10}" + "".join(f"{m[prefix + c]:>12.3f}" for c in cols))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- real models: the paper's judge
JUDGE_REFERENCE = "Answer the user's request as helpfully and accurately as you can."
JUDGE_RATE = """You are judging two AI assistants' answers to the same user question.

[Question]
{question}

[Assistant 1's answer]
{a1}
[End of Assistant 1's answer]

[Assistant 2's answer]
{a2}
[End of Assistant 2's answer]

Rate each answer for helpfulness, relevance, accuracy and level of detail, from 1 (worst) to 10 (best).
On the first line write only the two scores, Assistant 1's then Assistant 2's, separated by a space.
Then explain your judgement. The order in which the answers appear must not influence you."""
_SCORE_LINE = re.compile(r"^\D*?(\d+(?:\.\d+)?)\s*(?:/\s*10)?[\s,;]+(\d+(?:\.\d+)?)\s*(?:/\s*10)?")


def parse_scores(reply):
    """The judge's first non-empty line -> (score 1, score 2), or None if it cannot be read."""
    line = next((ln for ln in (reply or "").splitlines() if ln.strip()), "")
    m = _SCORE_LINE.match(line.strip())
    if not m:
        return None
    a = float(m.group(1))
    b = float(m.group(2))
    return (a, b) if 0 <= a <= 10 and 0 <= b <= 10 else None


def judge_scores(questions, answers, judge, cache, concurrency=8, log=print):
    """Paper protocol. The judge writes a reference answer per question, then rates (student, reference)
    in both orders; per question score = 100 * s / (s + r) with s, r averaged over the orders that
    parsed. Returns (mean score, number of unparseable replies, number of questions scored)."""
    ref_prompts = [[{"role": "system", "content": JUDGE_REFERENCE}] + q for q in questions]
    refs, _, _ = collect(judge, ref_prompts, cache, n=1, concurrency=concurrency, log=log)
    rate = []
    for q, a, (r,) in zip(questions, answers, refs):
        text = q[-1]["content"]
        rate.append([{"role": "user", "content": JUDGE_RATE.format(question=text, a1=a, a2=r)}])
        rate.append([{"role": "user", "content": JUDGE_RATE.format(question=text, a1=r, a2=a)}])
    replies, _, _ = collect(judge, rate, cache, n=1, concurrency=concurrency, log=log)
    scores = []
    unparsed = 0
    for i in range(0, len(replies), 2):
        first = parse_scores(replies[i][0])
        second = parse_scores(replies[i + 1][0])
        unparsed += (first is None) + (second is None)
        pairs = ([first] if first else []) + ([(second[1], second[0])] if second else [])  # (student, ref)
        if pairs:
            s = sum(p[0] for p in pairs) / len(pairs)
            r = sum(p[1] for p in pairs) / len(pairs)
            scores.append(100 * s / (s + r) if s + r > 0 else 50.0)
    if unparsed:
        log(f"[judge] {unparsed} of {len(replies)} judge replies could not be parsed; they are not scored")
    return (sum(scores) / len(scores) if scores else float("nan")), unparsed, len(scores)


def rouge_l(candidate, reference):
    """ROUGE-L F1 on whitespace tokens (longest common subsequence)."""
    c = candidate.split()
    r = reference.split()
    if not c or not r:
        return 0.0
    prev = [0] * (len(r) + 1)
    for x in c:
        cur = [0]
        for j, y in enumerate(r):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p = lcs / len(c)
    rec = lcs / len(r)
    return 2 * p * rec / (p + rec)


def ngram_overlap(candidate, reference, n):
    """Clipped n-gram precision of the candidate against the reference (BLEU's modified precision)."""
    grams = lambda ws: Counter(tuple(ws[i:i + n]) for i in range(len(ws) - n + 1))
    c = grams(candidate.split())
    r = grams(reference.split())
    total = sum(c.values())
    return sum(min(v, r[g]) for g, v in c.items()) / total if total else 0.0


def evaluate_real(run_dir, test_data, judge_spec=None, judge_base_url=None, temperature=0.0, max_new_tokens=512,
                  limit=0, concurrency=8, gen_batch_size=16, log=print):
    """Real models: answer the test prompts with every checkpoint of the run; judge and diagnose them."""
    recs = load_records(test_data, log=log)
    recs = recs[:limit] if limit else recs
    questions = [r["messages"] for r in recs]
    refs = [r["teacher_response"] for r in recs]
    judge = make_teacher(judge_spec, base_url=judge_base_url, temperature=0.0, max_tokens=1024, log=log,
                         flag="--judge") if judge_spec else None
    cache = TeacherCache(os.path.join(run_dir, "judge_cache.jsonl"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    found = [(m, path) for m in MODELS if (path := checkpoint_folder(run_dir, m))]
    if not found:
        raise SystemExit(f"eval.py: no checkpoints in {run_dir} (expected before/, warmup/, seqkd/ or gad/ generator/)")
    writable(os.path.join(run_dir, "eval.json"))
    answers = {}
    for name, path in found:
        tok, model = load(path, torch.bfloat16 if device == "cuda" else torch.float32, device)
        tok.pad_token = tok.pad_token or tok.eos_token
        torch.manual_seed(0)
        answers[name] = student_responses(model, tok, questions, 1, temperature, max_new_tokens, gen_batch_size)
        del model
    if all(r is not None for r in refs):
        answers["teacher"] = (refs, 1.0)
    results = {}
    for name, (texts, fin) in answers.items():
        m = {"length": statistics.mean(len(t.split()) for t in texts), "distinct_2": world.distinct_n(texts, 2),
             "finished": fin}
        if name != "teacher" and all(r is not None for r in refs):
            m["rouge_l"] = statistics.mean(rouge_l(t, r) for t, r in zip(texts, refs))
            for n in range(1, 5):
                m[f"ngram_{n}"] = statistics.mean(ngram_overlap(t, r, n) for t, r in zip(texts, refs))
        if judge is not None:
            m["judge_score"], m["judge_unparsed"], m["judged"] = judge_scores(questions, texts, judge, cache,
                                                                               concurrency, log)
        results[name] = m
    results["_config"] = {"test_data": test_data, "prompts": len(questions), "temperature": temperature,
                          "judge": judge.name if judge else None}
    write_json(os.path.join(run_dir, "eval.json"), results)
    cols = [c for c in ("judge_score", "judge_unparsed", "rouge_l", "ngram_1", "ngram_4", "length", "distinct_2")
            if any(c in m for m in results.values() if isinstance(m, dict))]
    log(f"{'model':<10}" + "".join(f"{c:>15}" for c in cols))
    for name, m in results.items():
        if not name.startswith("_"):
            log(f"{name:<10}" + "".join(f"{m[c]:>15.3f}" if c in m else f"{'-':>15}" for c in cols))
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", help="run folder(s) written by train_gad.py (before/, gad/, seqkd/ ...)")
    ap.add_argument("--test-data", default="", help="real models: JSONL/parquet of test prompts (content or prompt "
                    "column; teacher_response enables the overlap diagnostics)")
    ap.add_argument("--judge", default="", help="real models: the judge, openai:MODEL (key from $OPENAI_API_KEY)")
    ap.add_argument("--judge-base-url", default="", help="base URL of the judge's OpenAI-compatible endpoint")
    ap.add_argument("--judge-concurrency", type=int, default=8, help="judge requests in flight at once")
    ap.add_argument("--limit", type=int, default=0, help="real models: only the first N test prompts (0 = all)")
    ap.add_argument("--samples", type=int, default=4, help="embedded world: samples per prompt")
    ap.add_argument("--temperature", type=float, default=None,
                    help="sampling temperature; 0 = greedy (default: 0.8 embedded world, 0 real models)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="answer limit (default: 40 embedded, 512 real)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    a = ap.parse_args()
    for name, value, low in (("--samples", a.samples, 1), ("--limit", a.limit, 0), ("--judge-concurrency",
                             a.judge_concurrency, 1), ("--max-new-tokens", a.max_new_tokens, 1),
                             ("--temperature", a.temperature, 0)):
        if value is not None and value < low:
            ap.error(f"{name} must be >= {low}, got {value}")
    for d in a.run_dirs:
        if not os.path.isdir(d):
            sys.exit(f"eval.py: run folder not found: {d}")
    if a.test_data:
        try:
            for d in a.run_dirs:
                evaluate_real(d, a.test_data, a.judge or None, a.judge_base_url or None,
                              0.0 if a.temperature is None else a.temperature,
                              512 if a.max_new_tokens is None else a.max_new_tokens, a.limit, a.judge_concurrency)
        except (DataError, TeacherError) as e:
            sys.exit(f"eval.py: {e}")
    else:
        for d in a.run_dirs:
            evaluate(d, a.samples, 0.8 if a.temperature is None else a.temperature,
                     40 if a.max_new_tokens is None else a.max_new_tokens, a.seed)
