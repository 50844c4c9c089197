"""Training data: how a row of tokens is laid out (`pack`: [prompt ; response ; pad], with the masks every
model reads), prompt / teacher-response files in the paper's format, read with `datasets` and checked row by
row, then the training examples as token ids (`Data`) and the batches a step trains on (`Batch`).

Accepted files: .jsonl / .json (one object per line) or .parquet. Columns:
  content           list of {"role", "content"} chat messages (the paper's released data), or
  prompt            a plain string (becomes one user message)
  teacher_response  the teacher's answer (string); optional for a prompts-only file
                    (`response` is accepted as an alias)

Every problem is reported as one line naming the file, the row (1-based line for JSONL) and the field.
"""
import json
import os
import random
from dataclasses import dataclass

import torch
from datasets import load_dataset
from transformers import AutoTokenizer


# ---------------------------------------------------------------------------- tokens and rows
def load_tokenizer(path, trust_remote_code=False):
    """The student's tokenizer; it must have a chat template (prompts go through it)."""
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.chat_template is None:
        raise ValueError(f"the tokenizer of {path} has no chat template; use an instruct/chat "
                         "model or add a chat_template to its tokenizer_config.json")
    if tok.pad_token_id is None:  # masks come from lengths, so padding with EOS is safe here
        tok.pad_token = tok.eos_token
    return tok


def prompt_ids(tokenizer, messages):
    """Chat messages -> token ids through the student's chat template, with the generation prompt."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def response_ids(tokenizer, text, eos_id=None):
    """Response text -> token ids + the end-of-turn token (the same for teacher and student)."""
    eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [eos_id]


def pack(prompts, responses, pad_id, left_pad=False):
    """Lists of prompt / response id lists -> padded tensors.

    Returns dict: input_ids [B, L], attention_mask [B, L], response_mask [B, L] (1 on response tokens).
    """
    rows = [p + r for p, r in zip(prompts, responses)]
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), L), dtype=torch.long)
    resp = torch.zeros((len(rows), L), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        start = L - len(p) - len(r) if left_pad else 0
        ids[i, start:start + len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        attn[i, start:start + len(p) + len(r)] = 1
        resp[i, start + len(p):start + len(p) + len(r)] = 1
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}


def position_ids(attention_mask):
    """Positions counted over real tokens only, so a row means the same under left or right padding."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, L]; left pads get 0


def to_device(batch, device):
    """A packed batch's tensors on device."""
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------------------- data files
ROLES = {"system", "user", "assistant"}


class DataError(ValueError):
    pass


def _rows(path):
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, not a data file")
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".json"):
        # Parse ourselves first so a malformed line is reported with its line number.
        with open(path, "rb") as f:
            for i, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}: line {i}: not UTF-8 text (byte {e.start + 1} of the line)") from None
                if line.strip():
                    try:
                        yield i, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}: line {i}: malformed JSON ({e.msg})") from None
    elif ext == ".parquet":
        try:  # a 0-byte, truncated or non-parquet file fails somewhere inside pyarrow / datasets
            ds = load_dataset("parquet", data_files=path, split="train")
        except Exception as e:  # noqa: BLE001 -- any reader failure is one line for the user
            raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0][:200]})") from None
        for i, row in enumerate(ds, 1):
            yield i, row
    else:
        raise DataError(f"{path}: unsupported file type {ext!r} (expected .jsonl, .json or .parquet)")


def _messages(path, i, row):
    where = f"{path}: row {i}"
    if row.get("content") is not None:
        msgs = row["content"]
        if isinstance(msgs, str):
            raise DataError(f"{where}: field 'content': expected a list of chat messages, got a string "
                            "(use the 'prompt' column for plain strings)")
        if not isinstance(msgs, (list, tuple)) or not msgs:
            raise DataError(f"{where}: field 'content': expected a non-empty list of chat messages")
        out = []
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(f"{where}: field 'content'[{j}]: expected {{'role', 'content'}}")
            if m["role"] not in ROLES:
                raise DataError(f"{where}: field 'content'[{j}].role: unknown role {m['role']!r} "
                                f"(expected one of {sorted(ROLES)})")
            if not isinstance(m["content"], str):
                raise DataError(f"{where}: field 'content'[{j}].content: expected a string")
            _encodable(m["content"], f"{where}: field 'content'[{j}].content")
            out.append({"role": m["role"], "content": m["content"]})
        if out[-1]["role"] != "user":
            raise DataError(f"{where}: field 'content': the last message must be from the user")
        if not out[-1]["content"].strip():
            raise DataError(f"{where}: field 'content': empty prompt")
        return out
    if row.get("prompt") is not None:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise DataError(f"{where}: field 'prompt': empty prompt")
        _encodable(row["prompt"], f"{where}: field 'prompt'")
        return [{"role": "user", "content": row["prompt"]}]
    raise DataError(f"{where}: missing field 'content' (chat messages) or 'prompt' (string); "
                    f"found fields {sorted(row)}")


def _encodable(text, where):
    """Text that no request or tokenizer can carry (a lone surrogate such as "\\ud800" in JSON) is refused here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where}: character {e.start + 1} is not valid Unicode (a lone surrogate "
                        f"{text[e.start]!a})") from None


def load_records(path, need_response=False, log=None):
    """-> list of {"messages": [...], "teacher_response": str or None}. Raises DataError on bad input;
    duplicate prompts are kept (each row is an example) and counted in a warning."""
    out = []
    for i, row in _rows(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i}: expected a JSON object")
        rec = {"messages": _messages(path, i, row), "teacher_response": None}
        resp = row.get("teacher_response", row.get("response"))
        if resp is not None and not isinstance(resp, str):
            raise DataError(f"{path}: row {i}: field 'teacher_response': expected a string")
        if resp is not None:
            _encodable(resp, f"{path}: row {i}: field 'teacher_response'")
        if need_response and resp is None:
            raise DataError(f"{path}: row {i}: missing field 'teacher_response'")
        rec["teacher_response"] = resp
        out.append(rec)
    if not out:
        raise DataError(f"{path}: no rows")
    dups = duplicate_prompts(out)
    if log and dups:
        log(f"[data] {path}: {dups} of {len(out)} prompts repeat an earlier row (kept)")
    return out


def read_training_file(path, need_response, batch_prompts, log):
    """train_gad's --prompts / --teacher-data file, checked row by row before anything loads (None: no file)."""
    records = load_records(path, need_response=need_response, log=log) if path else None
    if records and batch_prompts > len(records):
        raise DataError(f"--batch-prompts {batch_prompts} is larger than the {len(records)} rows of {path}")
    return records


def fixed_subset(items, k, log):
    """k of the items (all when k is 0 or more than there are), the same k for every --seed (a fixed shuffle)."""
    if not k or k >= len(items):
        return items
    keep = sorted(random.Random(1234).sample(range(len(items)), k))
    log(f"[data] --train-prompts {k}: training on {k} of the {len(items)} prompts (the same for every seed)")
    return [items[i] for i in keep]


def within_prompt_len(prompts, tokenizer, max_len, log):
    """The prompts of at most max_len tokens, checked before any is sent to a paid teacher (a longer one would be
    dropped after its answer was paid for); the others are counted in the log."""
    keep = [m for m in prompts if len(prompt_ids(tokenizer, m)) <= max_len]
    if len(keep) < len(prompts):
        log(f"[data] skipped {len(prompts) - len(keep)} of {len(prompts)} prompts: prompt > {max_len} tokens "
            "(--max-prompt-len; not sent to the teacher)")
    return keep


def duplicate_prompts(records):
    """How many rows repeat the messages of an earlier row."""
    seen = set()
    dups = 0
    for r in records:
        key = json.dumps(r["messages"], sort_keys=True)
        dups += key in seen
        seen.add(key)
    return dups


# ---------------------------------------------------------------------------- training examples and batches
@dataclass
class Batch:
    idx: list            # which training examples
    prompts: list        # their prompts as token ids
    teacher: dict        # packed [prompt ; teacher response + EOS] rows: SFT targets and D's teacher side
    teacher_for_d: dict  # the rows D scores as the teacher's (without the EOS only in the --break-eos-symmetry lab)


class Data:
    """Training prompts as token ids, each with its one teacher response (+ EOS), in shuffled epochs."""

    def __init__(self, tokenizer, prompts, teacher_texts, cfg, log):
        self.prompts = []
        self.prompt_ids = []
        self.teacher_ids = []
        self.teacher_texts = []
        skipped = {"empty teacher response": 0, f"teacher response > {cfg.max_response_len} tokens": 0,
                   f"prompt > {cfg.max_prompt_len} tokens": 0}
        why = list(skipped)
        for messages, text in zip(prompts, teacher_texts):
            r = response_ids(tokenizer, text) if text and text.strip() else None  # an empty answer teaches nothing
            p = prompt_ids(tokenizer, messages) if r and len(r) <= cfg.max_response_len else None  # r keeps its EOS
            if r is None or p is None or len(p) > cfg.max_prompt_len:
                skipped[why[0] if r is None else why[1] if p is None else why[2]] += 1
                continue
            for kept, x in ((self.prompts, messages), (self.prompt_ids, p), (self.teacher_ids, r),
                            (self.teacher_texts, text)):
                kept.append(x)
        for reason, count in skipped.items():
            if count:
                log(f"[data] skipped {count} of {len(prompts)} examples: {reason}")
        if not self.prompt_ids:
            raise SystemExit("train_gad.py: no usable training examples left (see the [data] lines above)")
        if cfg.batch_prompts > len(self.prompt_ids):
            raise SystemExit(f"train_gad.py: --batch-prompts {cfg.batch_prompts} is larger than the "
                             f"{len(self.prompt_ids)} usable training examples")
        self.d_teacher_ids = [r[:-1] for r in self.teacher_ids] if cfg.break_eos_symmetry else self.teacher_ids
        self.pad_id = tokenizer.pad_token_id
        self.seed = cfg.seed
        self.size = cfg.batch_prompts
        self.restart()

    def restart(self):
        """A fresh data order for the next phase (the same for GAD and SeqKD)."""
        self.rng = random.Random(self.seed)
        self.order = []

    def messages(self, batch):
        """The chat messages of a batch's prompts."""
        return [self.prompts[i] for i in batch.idx]

    def next(self):
        """The next batch_prompts examples (a new shuffled epoch when one runs out)."""
        while len(self.order) < self.size:
            epoch = list(range(len(self.prompt_ids)))
            self.rng.shuffle(epoch)
            self.order += epoch
        idx = self.order[:self.size]
        self.order = self.order[self.size:]
        prompts = [self.prompt_ids[i] for i in idx]
        return Batch(idx, prompts, pack(prompts, [self.teacher_ids[i] for i in idx], self.pad_id),
                     pack(prompts, [self.d_teacher_ids[i] for i in idx], self.pad_id))


def micro_batches(batch, size):
    """(row slice, packed rows) pieces of a packed batch, `size` rows each (0 = one piece with every row);
    a piece is cut to its longest row (training batches are right-padded)."""
    n = len(batch["input_ids"])
    for i in range(0, n, size or n):
        yield slice(i, i + (size or n)), cut(batch, i, i + (size or n)) if size and size < n else batch


def cut(batch, start, stop):
    """Rows start:stop of a right-padded packed batch, cut to their longest row."""
    part = rows(batch, start, stop)
    width = int(part["attention_mask"].sum(-1).max())
    return {k: v[:, :width] for k, v in part.items()}


def rows(batch, start, stop):
    """Rows start:stop of a packed batch."""
    return {k: v[start:stop] for k, v in batch.items()}


def student_batch(batch, samples, n, pad_id):
    """[prompt ; sample] rows, grouped by prompt: row i*n + j is sample j of prompt i."""
    return pack([p for p in batch.prompts for _ in range(n)], samples, pad_id)
