"""The black-box teacher: chat messages in, response *text* out -- nothing else (no logits, no tokens).

A teacher is any object with
    name: str                                  identifies the model (part of the cache key)
    params: dict                               sampling parameters (part of the cache key)
    respond(messages, n) -> list[str]          n responses to one prompt

`TeacherCache` keeps every collected response on disk (JSONL, one line per prompt), keyed by a hash of
(teacher name, messages, params), so a response is never paid for twice and an interrupted collection
resumes where it stopped. `collect` is the only way training reads the teacher.
"""
import hashlib
import json
import os
import random

import world


class EmbeddedTeacher:
    """The embedded world's teacher program (world.teacher_respond), seen only through its text."""

    def __init__(self, seed=0):
        self.name = "embedded:world-v1"
        self.params = {"seed": seed}

    def respond(self, messages, n=1):
        # Deterministic per (seed, prompt): a re-collection gives the same text, like a cached API.
        key = json.dumps([self.params["seed"], messages], sort_keys=True)
        rng = random.Random(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16))
        return [world.teacher_respond(messages, rng) for _ in range(n)]


def cache_key(teacher_name, messages, params):
    blob = json.dumps({"teacher": teacher_name, "messages": messages, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class TeacherCache:
    """Append-only JSONL: {"key", "teacher", "messages", "params", "responses"} per line.

    Each line is written and flushed in one call, so a crash loses at most the line being written;
    a torn last line is skipped (and reported) on the next load."""

    def __init__(self, path):
        self.path = path
        self.entries = {}
        self.torn_lines = 0
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.entries[rec["key"]] = rec["responses"]
                    except (json.JSONDecodeError, KeyError):
                        self.torn_lines += 1

    def get(self, key):
        return self.entries.get(key)

    def put(self, key, teacher, messages, params, responses):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        rec = {"key": key, "teacher": teacher, "messages": messages, "params": params, "responses": responses}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries[key] = responses


def collect(teacher, prompts, cache, n=1):
    """Teacher responses for every prompt: from the cache where present, else asked once and cached.

    Returns (responses: list of n-lists of str, aligned with prompts; calls: number of teacher calls)."""
    out, calls = [], 0
    for messages in prompts:
        key = cache_key(teacher.name, messages, {**teacher.params, "n": n})
        responses = cache.get(key)
        if responses is None:
            responses = teacher.respond(messages, n)
            calls += 1
            cache.put(key, teacher.name, messages, {**teacher.params, "n": n}, responses)
        out.append(responses)
    return out, calls
