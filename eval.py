"""Evaluate students (and the teacher) on the held-out prompts with the privileged judge.

    python eval.py runs/default            # judge every checkpoint of a run, print a table, write eval.json
    python eval.py --summary runs/seed0 runs/seed1 runs/seed2   # mean +- std over runs' eval.json (markdown)

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
import json
import os
import sys

import torch

import generator as G
import world

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


def student_responses(model, tokenizer, prompts, n, temperature, max_new_tokens):
    ids = G.sample(model, tokenizer, [G.prompt_ids(tokenizer, m) for m in prompts], n, temperature, max_new_tokens)
    eos = tokenizer.eos_token_id
    texts = [tokenizer.decode(r[:-1] if G.finished(r, eos) else r) for r in ids]
    return texts, sum(G.finished(r, eos) for r in ids) / len(ids)


def checkpoint(run_dir, name):
    """The generator folder of a run's model; 'before' may be a --student folder given by path."""
    path = os.path.join(run_dir, name, "generator")
    if os.path.isdir(path):
        return path
    config = os.path.join(run_dir, "config.json")
    if name == "before" and os.path.exists(config):
        student = json.load(open(config)).get("student")
        if student and student != "embedded" and os.path.isdir(student):
            return student
    return None


def evaluate(run_dir, samples=4, temperature=0.8, max_new_tokens=40, seed=0, log=print):
    """Judge every checkpoint found in run_dir plus the teacher; write run_dir/eval.json atomically.

    Main metrics are on the in-domain "test" prompts; the same metrics on the out-of-domain topics
    are stored with an "ood_" prefix."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import teacher as T
    splits = {"": world.prompts("test"), "ood_": world.prompts("ood")}
    results, examples = {}, {}
    for name in MODELS:
        path = checkpoint(run_dir, name)
        if path is None:
            continue
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        results[name] = {}
        for prefix, prompts in splits.items():
            torch.manual_seed(seed)
            texts, fin = student_responses(model, tok, prompts, samples, temperature, max_new_tokens)
            m = {**judge_responses(prompts, texts, samples), "finished": fin}
            results[name].update({prefix + k: v for k, v in m.items()})
            examples.setdefault(prefix, {})[name] = texts[::samples]
    teacher = T.EmbeddedTeacher(seed=seed + 12345)  # fresh teacher samples, not the training data
    results["teacher"] = {}
    for prefix, prompts in splits.items():
        texts = [r for m in prompts for r in teacher.respond(m, samples)]
        m = {**judge_responses(prompts, texts, samples), "finished": 1.0}
        results["teacher"].update({prefix + k: v for k, v in m.items()})
        examples[prefix]["teacher"] = texts[::samples]
    results["_config"] = {"samples_per_prompt": samples, "temperature": temperature, "seed": seed,
                          "prompts": {"test": len(splits[""]), "ood": len(splits["ood_"])}}
    tmp = os.path.join(run_dir, "eval.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, os.path.join(run_dir, "eval.json"))
    log("In-domain test prompts:\n" + format_table(results) + "\n\nOut-of-domain topics:\n"
        + format_table(results, "ood_"))
    for prefix, prompts in splits.items():
        log(f"\nSample responses ({'out-of-domain' if prefix else 'test'} prompts):")
        for i in range(0, len(prompts), max(1, len(prompts) // 2)):
            log(f"  prompt : {prompts[i][-1]['content']}")
            for name, ex in examples[prefix].items():
                log(f"  {name:>8}: {ex[i]}")
    return results


def format_table(results, prefix=""):
    cols = ["fidelity", "relevance", "length", "distinct_2", "finished", "modes"]
    lines = [f"{'model':<10}" + "".join(f"{c:>12}" for c in cols)]
    for name, m in results.items():
        if not name.startswith("_"):
            lines.append(f"{name:<10}" + "".join(f"{m[prefix + c]:>12.3f}" for c in cols))
    return "\n".join(lines)


def summarize(run_dirs, keys=("fidelity", "relevance", "length", "distinct_2", "modes", "ood_fidelity",
                                 "ood_relevance")):
    """Markdown table of mean +- std (population) over several runs' eval.json."""
    import statistics
    evals = [json.load(open(os.path.join(d, "eval.json"))) for d in run_dirs]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in MODELS + ["teacher"]:
        if all(name in e for e in evals):
            cells = []
            for k in keys:
                v = [e[name][k] for e in evals]
                cells.append(f"{statistics.mean(v):.3f} ± {statistics.pstdev(v):.3f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n({len(evals)} runs: {', '.join(run_dirs)})"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", help="run folder(s) written by train_gad.py (before/, gad/, seqkd/ ...)")
    ap.add_argument("--summary", action="store_true", help="only aggregate the runs' existing eval.json files")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt")
    ap.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0 = greedy)")
    ap.add_argument("--max-new-tokens", type=int, default=40, help="response length limit in tokens")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    a = ap.parse_args()
    for d in a.run_dirs:
        if not os.path.isdir(d):
            sys.exit(f"eval.py: run folder not found: {d}")
        if a.summary and not os.path.exists(os.path.join(d, "eval.json")):
            sys.exit(f"eval.py: {os.path.join(d, 'eval.json')} not found (run eval.py {d} first)")
    if a.summary:
        print(summarize(a.run_dirs))
    else:
        for d in a.run_dirs:
            evaluate(d, a.samples, a.temperature, a.max_new_tokens, a.seed)
