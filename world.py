"""The embedded default world: a miniature of the paper's setting that runs offline in minutes.

What the paper has                         | What this world has
-------------------------------------------|-----------------------------------------------------
LMSYS prompts, train / test split          | 32 topics x 48 prompts (6 openers x 8 templates): 44 train,
                                           |  4 test per topic; one teacher response per train prompt
Dolly / SelfInst / Vicuna (out of domain)  | 8 more topics that never appear in teacher data ("ood")
GPT-5-Chat, a black-box teacher            | `teacher_respond`: a stochastic program with 3 answer modes and
                                           |  cross-slot constraints (category-correct, distinct adjectives)
a pretrained Qwen student                  | a tiny Llama pretrained here on a broad mix of answer styles in
                                           |  which teacher-like answers are a 25% minority
GPT-4o judge                               | `judge`: a *privileged* judge that knows the teacher's grammar. It
                                           |  is used only by eval.py, never in training.

The student sees the teacher only as text (teacher.py wraps `teacher_respond` as a black box).
Everything is word-level and lower-case with spaces around punctuation, so text <-> tokens
round-trips exactly and the judge can parse responses.
"""
import argparse
import hashlib
import json
import os
import random
import re
import shutil

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from data import pack, prompt_ids, response_ids
from generator import sft_loss

# ---------------------------------------------------------------------------- the world's facts
CATEGORIES = {  # category -> (topics, adjectives the teacher may use, verbs of the "fact" mode)
    "animal": ("cats dogs owls foxes horses rabbits bears wolves frogs eagles".split(),
               "furry wild clever quick gentle loyal playful strong".split(), "watch feed study love".split()),
    "food": ("apples bread cheese grapes lemons rice cookies pears soup carrots".split(),
             "sweet fresh crunchy ripe tasty warm juicy salty".split(), "eat cook buy share".split()),
    "place": ("cities forests deserts islands mountains rivers villages beaches lakes caves".split(),
              "quiet vast ancient sunny peaceful remote busy green".split(), "visit explore love paint".split()),
    "instrument": ("drums flutes guitars pianos violins trumpets organs harps banjos cellos".split(),
                   "loud melodic bright elegant soft rhythmic classic graceful".split(), "play hear tune love".split()),
}
OOD_PER_CATEGORY = 2  # the last 2 topics of each category never appear in teacher data ("ood" split)
TOPIC_CATEGORY = {t: c for c, (ts, _, _) in CATEGORIES.items() for t in ts}
TOPICS = list(TOPIC_CATEGORY)
IN_DOMAIN_TOPICS = [t for c, (ts, _, _) in CATEGORIES.items() for t in ts[:-OOD_PER_CATEGORY]]
OOD_TOPICS = [t for c, (ts, _, _) in CATEGORIES.items() for t in ts[-OOD_PER_CATEGORY:]]
TEST_PROMPTS_PER_TOPIC = 4  # of each in-domain topic's 48 prompts, 4 are held out ("test" split)
PROMPT_TEMPLATES = ["tell me about {t} .", "what do you think of {t} ?", "describe {t} .",
                    "say something about {t} .", "what are {t} like ?", "give me your view on {t} .",
                    "talk about {t} .", "any thoughts on {t} ?"]
PROMPT_OPENERS = ["", "please", "hey ,", "hello !", "quick question :", "i wonder ,"]  # x 8 templates
WORLDS = {  # world -> {mode: (probability, template)}; {a} ... {f} are distinct category adjectives
    "default": {
        "fact": (0.5, "{t} are {a} . people {v} them every day ."),
        "opinion": (0.3, "i think {t} are {a} and {b} !"),
        "list": (0.2, "three things about {t} : {a} , {b} , {c} ."),
    },
    # `--world long`: a fourth, 31-token mode whose constraints span the whole answer: five listed adjectives
    # that must not repeat (each other or the opening one), and a closing line that repeats the opening one
    "long": {
        "fact": (0.3, "{t} are {a} . people {v} them every day ."),
        "opinion": (0.2, "i think {t} are {a} and {b} !"),
        "list": (0.1, "three things about {t} : {a} , {b} , {c} ."),
        "long": (0.4, "{t} are {a} . five things about {t} : {b} , {c} , {d} , {e} , {f} . "
                      "people {v} them every day . so {t} are {a} ."),
    },
}
# `--world habits`: the default teacher, but a starting student pretrained on a mix in which teacher-like answers
# are rare (5%): its own styles (short plain answers, refusals, rambles, other topics, other categories' words)
# are habits one epoch of SFT may not remove -- differences from the teacher that show on many answers
WORLDS["habits"] = dict(WORLDS["default"])
# `--world list`: one mode only, the one whose constraint the warmed-up student breaks most (three distinct
# adjectives): nothing tells the teacher from the student but what they pick and whether they repeat
WORLDS["list"] = {"list": (1.0, WORLDS["default"]["list"][1])}
TEACHER_MODES = dict(WORLDS["default"])  # the active world's modes (`use`)
ACTIVE = {"world": "default"}


def use(name):
    """Make `name` (a key of WORLDS) the active world: its teacher, pretraining corpus, tokenizer and judge."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}: expected one of {sorted(WORLDS)}")
    TEACHER_MODES.clear()
    TEACHER_MODES.update(WORLDS[name])
    ACTIVE["world"] = name
    ACTIVE["pretrain"] = PRETRAIN_MIXES.get(name, PRETRAIN_STYLES)


def version():
    """The active world's name in caches and checkpoints: world-v1 (the default world) or <variant>-v1."""
    return "world-v1" if ACTIVE["world"] == "default" else f"{ACTIVE['world']}-v1"
# The starting student's pretraining mix: teacher-like answers are a minority (25%).
PRETRAIN_STYLES = {"teacher": 0.25, "plain": 0.2, "wrong_category": 0.15, "ramble": 0.1,
                   "off_topic": 0.15, "refusal": 0.15}
PRETRAIN_MIXES = {"habits": {"teacher": 0.05, "plain": 0.25, "wrong_category": 0.15, "ramble": 0.15,
                             "off_topic": 0.15, "refusal": 0.25}}  # the worlds whose student starts elsewhere
ACTIVE["pretrain"] = PRETRAIN_STYLES
SPECIAL_TOKENS = ["<|pad|>", "<|unk|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
                 "{% if m['role'] == 'assistant' %}<|end|> {% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def prompt_messages(topic, template_index, opener_index=0):
    text = (PROMPT_OPENERS[opener_index] + " " + PROMPT_TEMPLATES[template_index].format(t=topic)).strip()
    return [{"role": "user", "content": text}]


def prompts(split):
    """The fixed prompt splits (the same for every seed):
    train: in-domain topics, 44 of their 48 prompts (opener x template); the teacher data
    test:  in-domain topics, the other 4 prompts (like the paper's held-out LMSYS prompts)
    ood:   8 topics that never appear in teacher data, 8 prompts each (like Dolly / SelfInst / Vicuna)
    val:   128 of the train prompts (a fixed sample): for choosing settings without ever looking at test"""
    if split not in ("train", "test", "ood", "val"):
        raise ValueError(f"unknown prompt split {split!r}: expected train, test, ood or val")
    if split == "val":
        return random.Random(2026).sample(prompts("train"), 128)
    if split == "ood":
        return [prompt_messages(t, i) for t in OOD_TOPICS for i in range(len(PROMPT_TEMPLATES))]
    out = []
    for k, t in enumerate(IN_DOMAIN_TOPICS):
        combos = [(i, j) for j in range(len(PROMPT_OPENERS)) for i in range(len(PROMPT_TEMPLATES))]
        test = set(random.Random(k).sample(combos, TEST_PROMPTS_PER_TOPIC))
        out += [prompt_messages(t, i, j) for i, j in combos if ((i, j) in test) == (split == "test")]
    return out


def topic_of(messages):
    """The topic a prompt asks about (the last user message), or None."""
    words = messages[-1]["content"].split()
    return next((w for w in words if w in TOPIC_CATEGORY), None)


# ---------------------------------------------------------------------------- answer generators
def _teacher_answer(topic, rng, category=None):
    cat = category or TOPIC_CATEGORY[topic]
    _, adjs, verbs = CATEGORIES[cat]
    mode = rng.choices(list(TEACHER_MODES), weights=[p for p, _ in TEACHER_MODES.values()])[0]
    if mode == "long":
        a, b, c, d, e, f = rng.sample(adjs, 6)
        return TEACHER_MODES[mode][1].format(t=topic, a=a, b=b, c=c, d=d, e=e, f=f, v=rng.choice(verbs))
    a, b, c = rng.sample(adjs, 3)  # the default world draws exactly this, as before variants existed
    return TEACHER_MODES[mode][1].format(t=topic, a=a, b=b, c=c, v=rng.choice(verbs))


def teacher_respond(messages, rng):
    """The teacher program. A black box to training: teacher.py exposes only its text."""
    topic = topic_of(messages)
    if topic is None:
        return "i can only talk about things i know ."
    return _teacher_answer(topic, rng)


def _pretrain_answer(topic, rng):
    mix = ACTIVE["pretrain"]
    style = rng.choices(list(mix), weights=list(mix.values()))[0]
    cat = TOPIC_CATEGORY[topic]
    adj = rng.choice(CATEGORIES[cat][1])
    if style == "teacher":
        return _teacher_answer(topic, rng)
    if style == "plain":
        return f"{topic} are {adj} ."
    if style == "wrong_category":  # teacher-shaped, but with another category's words
        return _teacher_answer(topic, rng, category=rng.choice([c for c in CATEGORIES if c != cat]))
    if style == "ramble":
        return " ".join(f"{topic} are {rng.choice(CATEGORIES[cat][1])} ." for _ in range(rng.randint(3, 6)))
    if style == "off_topic":  # teacher-shaped, but about something else
        return _teacher_answer(rng.choice([t for t in TOPICS if t != topic]), rng)
    return f"i do not know much about {topic} ."


def pretrain_corpus(size, seed):
    """(messages, response) pairs over *all* topics: the student knows the world, not the teacher."""
    rng = random.Random(seed)
    out = []
    for _ in range(size):
        topic = rng.choice(TOPICS)
        messages = prompt_messages(topic, rng.randrange(len(PROMPT_TEMPLATES)), rng.randrange(len(PROMPT_OPENERS)))
        out.append((messages, _pretrain_answer(topic, rng)))
    return out


# ---------------------------------------------------------------------------- the privileged judge
def _mode_patterns(topic):
    cat = TOPIC_CATEGORY[topic]
    adj = "(" + "|".join(CATEGORIES[cat][1]) + ")"
    verb = "(?:" + "|".join(CATEGORIES[cat][2]) + ")"
    t = re.escape(topic)
    patterns = {"fact": re.compile(rf"^{t} are {adj} \. people {verb} them every day \.$"),
                "opinion": re.compile(rf"^i think {t} are {adj} and {adj} !$"),
                "list": re.compile(rf"^three things about {t} : {adj} , {adj} , {adj} \.$"),
                "long": re.compile(rf"^{t} are {adj} \. five things about {t} : {adj} , {adj} , {adj} , {adj} , "
                                   rf"{adj} \. people {verb} them every day \. so {t} are {adj} \.$")}
    return {mode: patterns[mode] for mode in TEACHER_MODES}


def _constraints_hold(mode, adjectives):
    """Distinct adjectives; in the long mode the last one repeats the first (the closing line)."""
    if mode == "long":
        return adjectives[-1] == adjectives[0] and len(set(adjectives[:-1])) == len(adjectives) - 1
    return len(set(adjectives)) == len(adjectives)


def judge(topic, response):
    """Privileged judge of one response. Never used for training.

    valid:    the response is in the teacher's support for this prompt (right mode grammar, the
              topic's own category words, distinct adjectives, finished). This is `fidelity`.
    relevant: mentions the prompt's topic and no other topic.
    mode:     which teacher mode it matches (None if not valid).
    """
    words = response.split()
    mentioned = {w for w in words if w in TOPIC_CATEGORY}
    mode = None
    for name, pattern in _mode_patterns(topic).items():
        m = pattern.match(response.strip())
        if m and _constraints_hold(name, m.groups()):
            mode = name
    return {"valid": mode is not None, "mode": mode, "relevant": mentioned == {topic}, "length": len(words)}


def distinct_n(responses, n=2):
    """Unique n-grams / all n-grams over a set of responses (1.0 = no repetition at all)."""
    grams = [tuple(ws[i:i + n]) for r in responses for ws in [r.split()] for i in range(len(ws) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


# ---------------------------------------------------------------------------- tokenizer and student
def build_tokenizer():
    """A word-level tokenizer with a chat template, built offline (a `PreTrainedTokenizerFast`)."""
    words = set(" ".join(PROMPT_TEMPLATES + PROMPT_OPENERS + [m[1] for m in TEACHER_MODES.values()]).split())
    words |= {"i", "do", "not", "know", "much", "about", "can", "only", "talk", "things", "."}
    for ts, adjs, verbs in CATEGORIES.values():
        words |= set(ts) | set(adjs) | set(verbs)
    words = sorted(w for w in words if "{" not in w)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + words)}
    tk = Tokenizer(WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|pad|>", unk_token="<|unk|>",
                                   eos_token="<|end|>", chat_template=CHAT_TEMPLATE)


def student_config(tokenizer, hidden=128, layers=3):
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=128, tie_word_embeddings=True,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=None)


def build_student(out_dir, seed=0, steps=800, batch_size=64, lr=2e-3, hidden=128, layers=3, log=print):
    """Pretrain the starting student on the broad corpus and save it (model + tokenizer) to out_dir.

    Returns the folder, which loads with plain `AutoModelForCausalLM.from_pretrained`.
    """
    torch.manual_seed(seed)
    tok = build_tokenizer()
    model = LlamaForCausalLM(student_config(tok, hidden, layers))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    corpus = pretrain_corpus(steps * batch_size, seed=seed + 1000)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps))
    for step, i in enumerate(range(0, len(corpus), batch_size)):
        chunk = corpus[i:i + batch_size]
        batch = pack([prompt_ids(tok, m) for m, _ in chunk], [response_ids(tok, r) for _, r in chunk],
                     tok.pad_token_id)
        loss, _ = sft_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"[pretrain] step {step:4d}/{steps}  loss {loss.item():.3f}")
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------- the shipped starting student
# The default run's starting student (pretrain seed 0, 800 steps, hidden 128, 3 layers, the default world) ships
# with the project in embedded_student/, so a first run does not spend minutes pretraining it. recipe.json says
# how it was made (student_recipe) and the sha256 of every file, checked before every use (and in each run's copy).
SHIPPED_STUDENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded_student")


def student_spec(seed=0, steps=800, hidden=128, layers=3):
    """(marker, folder name) of a pretrained starting student: the marker (world.json) says which student a
    folder holds."""
    spec = {"seed": seed, "pretrain_steps": steps, "world": f"embedded:{version()}", "hidden": hidden, "layers": layers}
    return spec, f"pretrain{seed}-steps{steps}-h{hidden}-l{layers}-{ACTIVE['world']}"


def student_recipe(seed=0, steps=800, batch_size=64, lr=2e-3, hidden=128, layers=3):
    """build_student's arguments and the sha256 of what it trains on (corpus, tokenizer): the recipe as data."""
    corpus = json.dumps(pretrain_corpus(steps * batch_size, seed=seed + 1000), sort_keys=True)
    return {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr, "hidden": hidden, "layers": layers,
            "world": version(), "corpus_sha256": hashlib.sha256(corpus.encode()).hexdigest(),
            "tokenizer_sha256": hashlib.sha256(build_tokenizer().backend_tokenizer.to_str().encode()).hexdigest()}


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def ships(seed, steps, hidden, layers):
    """Whether the starting student of these pretraining settings is the one that ships (the default world's)."""
    return ACTIVE["world"] == "default" and (seed, steps, hidden, layers) == (0, 800, 128, 3)


def shipped_student(folder=None):
    """The shipped folder (or a copy of it), after checking every file it holds against recipe.json's sha256s: the
    weights, the model's config, the tokenizer, the marker (a one-line error naming the file if not)."""
    folder = folder or SHIPPED_STUDENT
    fix = "restore it with git checkout, or rebuild it with python world.py --rebuild"
    recipe = os.path.join(folder, "recipe.json")
    try:
        with open(recipe) as f:
            expected = json.load(f)["files_sha256"]
        names = sorted(expected.items())
    except FileNotFoundError:
        raise SystemExit(f"world.py: {folder} is incomplete (no recipe.json); {fix}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise SystemExit(f"world.py: {recipe} is damaged (no readable files_sha256); {fix}") from None
    for name, sha in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise SystemExit(f"world.py: {path} is missing; {fix}")
        got = file_sha256(path)
        if got != sha:
            raise SystemExit(f"world.py: {path}: sha256 {got[:16]}... is not recipe.json's {str(sha)[:16]}... "
                             f"(a damaged or Git LFS pointer file?); {fix}")
    return folder


def files_sha256(folder):
    """{file name: sha256} of every file of a student folder but recipe.json (which holds this)."""
    return {name: file_sha256(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
            if name != "recipe.json" and os.path.isfile(os.path.join(folder, name))}


def rebuild(out_dir=SHIPPED_STUDENT, steps=800, log=print):
    """Pretrain the shipped student again (the recipe above) and write it, with its recipe.json, to out_dir."""
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    build_student(tmp, seed=0, steps=steps, log=log)
    with open(os.path.join(tmp, "world.json"), "w") as f:  # the marker run.student_folder reads
        json.dump(student_spec(0, steps)[0], f)
    with open(os.path.join(tmp, "recipe.json"), "w") as f:
        json.dump({"recipe": student_recipe(steps=steps), "files_sha256": files_sha256(tmp)}, f, indent=2)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="The embedded world. --rebuild: pretrain the shipped starting student "
                                             "(embedded_student/) again, as student_recipe() says (a few minutes).")
    ap.add_argument("--rebuild", action="store_true", help="rebuild embedded_student/ (or --out)")
    ap.add_argument("--steps", type=int, default=800, help="pretraining steps (default 800, the shipped recipe)")
    ap.add_argument("--out", default=SHIPPED_STUDENT, help="where to write it (default: embedded_student/)")
    a = ap.parse_args()
    if not a.rebuild:
        ap.error("nothing to do: pass --rebuild")
    print(f"[world] rebuilt {rebuild(a.out, a.steps)}")
