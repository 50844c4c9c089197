"""The black-box teacher: chat messages in, response *text* out -- nothing else (no logits, no tokens).

A teacher has `name` and `params` (both part of the cache key) and `answer(messages, n) -> (texts, finishes)`,
finish "stop", "length" (cut off at the teacher's token limit) or "refused" (text None); `respond` gives the texts.
`make_teacher(spec)`: embedded (the embedded world's program), openai:MODEL (any OpenAI-compatible endpoint; the key
from the environment) or hf:PATH (a local chat model, optionally with a hidden system prompt: context distillation).
Pre-collected pairs in the paper's format are read by data.py instead (`--teacher-data`).

`TeacherCache` keeps every answer on disk (JSONL, a line per prompt, keyed by a hash of teacher, messages and
params), shared by the runs under one runs/ folder, so an answer is never paid for twice and an interrupted
collection resumes. `collect` is the only way training reads the teacher: an empty answer is asked again (EMPTY_RETRIES
times, and by the next collection); a refusal or a cut-off answer is recorded, never asked again, and left out of
training. `training_pairs` is train_gad's stage 0.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from urllib.parse import urlsplit, urlunsplit

import openai
from transformers import AutoModelForCausalLM, AutoTokenizer

import checkpoint
import data
import generator
import world

EMPTY_RETRIES = 2  # an empty answer is asked again this many times before it is recorded (and asked next run)


class EmbeddedTeacher:
    """The embedded world's teacher program (world.teacher_respond), seen only through its text."""

    def __init__(self, seed=0):
        self.name = f"embedded:{world.version()}"
        self.params = {"seed": seed}

    def respond(self, messages, n=1):
        # Deterministic per (seed, prompt): a re-collection gives the same text, like a cached API.
        key = json.dumps([self.params["seed"], messages], sort_keys=True)
        rng = random.Random(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16))
        return [world.teacher_respond(messages, rng) for _ in range(n)]

    def answer(self, messages, n=1):
        return self.respond(messages, n), ["stop"] * n


def with_system_prompt(messages, system_prompt):
    """The messages a teacher is sent: its hidden system prompt (if any) first."""
    return [{"role": "system", "content": system_prompt}] + list(messages) if system_prompt else list(messages)


def cache_key(teacher_name, messages, params):
    blob = json.dumps({"teacher": teacher_name, "messages": messages, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def default_cache_path(runs_dir, teacher_name):
    """One cache file per teacher, shared by the runs under runs_dir: runs_dir/.teacher_cache/<teacher>.jsonl."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", teacher_name)[:60]
    digest = hashlib.sha256(teacher_name.encode()).hexdigest()[:8]
    return os.path.join(runs_dir, ".teacher_cache", f"{slug}-{digest}.jsonl")


def is_empty(text):
    return text is not None and not text.strip()


def to_ask(cache, keys):
    """The keys, once each, whose answer is not in the cache or is empty (an empty answer is asked again)."""
    return list(dict.fromkeys(k for k in keys if cache.get(k) is None or any(map(is_empty, cache.get(k)[0]))))


def finish_of(finish_reason):
    """An OpenAI finish_reason as the cache records it: refused (content filter), length (cut off) or stop."""
    return {"content_filter": "refused", "length": "length"}.get(finish_reason, "stop")


RECORD_START = b'{"key": "'  # how every cache line begins (json.dumps of put's record)


class TeacherCache:
    """Append-only JSONL: {"key", "teacher", "messages", "params", "responses", "finish"} per line, each one locked
    write (`checkpoint.append_locked`: runs side by side may share the file), so a crash loses at most the line being
    written, and only that answer is asked again (`torn_lines`). A file whose first line is not a cache record (a data
    file given as --teacher-cache) is refused, never changed; a complete cache on a read-only mount is used as is."""

    def __init__(self, path, log=None):
        self.path = path
        self.log = log
        self.entries = {}
        self.torn_lines = 0
        self.offset = 0
        self.lock = threading.Lock()
        if os.path.isdir(path):
            raise TeacherError(f"teacher cache {path}: is a folder, not a cache file")
        self.refresh()
        if self.torn_lines and log:
            log(f"[teacher] {path}: {self.torn_lines} torn line(s) of an interrupted write; "
                "those answers are asked again")

    def refresh(self):
        """Read the lines appended since the last read (by this run or by another run sharing the file)."""
        if not os.path.exists(self.path):
            return
        try:
            f = open(self.path, "rb+")
        except OSError:  # a read-only file or mount: read it, change nothing
            f = open(self.path, "rb")
        with f:
            fcntl.flock(f, fcntl.LOCK_EX if f.writable() else fcntl.LOCK_SH)  # no append is half-way while we read
            f.seek(self.offset)
            data = f.read()
            end = data.rfind(b"\n") + 1
            lines = data[:end].split(b"\n")[:-1]
            tail = data[end:]
            records = [_record(line) for line in lines]
            if self.offset == 0 and (records[0] is None if records else tail and not _record_start(tail)):
                raise TeacherError(f"teacher cache {self.path}: not a teacher cache (line 1 is not a cache "
                                   "record); give --teacher-cache a new path or an existing cache file")
            if tail and f.writable():  # a torn last line: cut it off, before anything is appended after it
                f.truncate(self.offset + end)
                self.torn_lines += 1
        for rec in records:
            if rec is None:
                self.torn_lines += 1  # a damaged line: its answer is asked again
            else:
                self.entries[rec["key"]] = (rec["responses"], rec["finish"])
        self.offset += end

    def get(self, key):
        """(texts, finishes) or None."""
        return self.entries.get(key)

    @contextlib.contextmanager
    def claimed(self, log=None):
        """One collection at a time per cache file (path + ".lock"): a run that finds another collecting waits,
        then re-reads the cache, so runs side by side pay once for each answer."""
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            f = open(self.path + ".lock", "a")
        except OSError as e:
            raise TeacherError(f"teacher cache {self.path}: answers are missing and the cache cannot be written "
                               f"({e.strerror})") from None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if log:
                    log(f"[teacher] another run is collecting into {self.path}: waiting for it, then using its answers")
                fcntl.flock(f, fcntl.LOCK_EX)
            self.refresh()
            yield

    def put(self, key, teacher, messages, params, responses, finish):
        rec = {"key": key, "teacher": teacher, "messages": messages, "params": params, "responses": responses,
               "finish": finish}
        with self.lock:
            self.torn_lines += checkpoint.append_locked(self.path, (json.dumps(rec) + "\n").encode("utf-8"))
            self.entries[key] = (responses, finish)


def _record(line):
    """The cache record a line holds, or None."""
    try:
        rec = json.loads(line.decode("utf-8"))
        whole = isinstance(rec, dict) and isinstance(rec.get("key"), str) and {"responses", "finish"} <= set(rec)
        return rec if whole else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _record_start(fragment):
    """Whether bytes can be the start of a cache line (a torn one)."""
    return fragment.startswith(RECORD_START) or RECORD_START.startswith(fragment)


def collect(teacher, prompts, cache, n=1, concurrency=1, log=None):
    """Teacher responses for every prompt: from the cache where present, else asked once and cached.

    Up to `concurrency` requests are in flight at once; each answer is cached the moment it arrives, so
    an interrupted collection loses nothing and a rerun asks only for what is missing -- or empty. Runs side
    by side sharing the cache take turns (`TeacherCache.claimed`), so each answer is paid for once.
    Returns (texts: list of n-lists of str or None, finishes: list of n-lists, calls: prompts asked)."""
    params = {**teacher.params, "n": n}
    keys = [cache_key(teacher.name, m, params) for m in prompts]
    by_key = dict(zip(keys, prompts))
    missing = to_ask(cache, keys)
    if missing:  # nothing is written (or locked) when the cache already holds every answer
        with cache.claimed(log):  # another run collecting into this cache finishes first; then only what it left
            missing = to_ask(cache, keys)
            _ask_all(teacher, missing, by_key, params, cache, concurrency, log)
    return [cache.get(k)[0] for k in keys], [cache.get(k)[1] for k in keys], len(missing)


def _ask_all(teacher, missing, by_key, params, cache, concurrency, log):
    n = params["n"]

    def ask(key):
        for _ in range(1 + EMPTY_RETRIES):
            texts, finish = teacher.answer(by_key[key], n)
            if not any(map(is_empty, texts)):
                break
        cache.put(key, teacher.name, by_key[key], params, texts, finish)

    t0 = time.time()
    done = 0
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    futures = [pool.submit(ask, k) for k in missing]
    try:
        for fut in as_completed(futures):
            fut.result()  # re-raises a TeacherError: the run stops with a clear message
            done += 1
            if log and (done % 100 == 0 or done == len(missing)):
                log(f"[teacher] {done}/{len(missing)} collected ({time.time() - t0:.0f} s)")
    finally:  # on an error or Ctrl-C: nothing new starts, and nobody waits for the requests in flight
        pool.shutdown(wait=False, cancel_futures=True)


class TeacherError(RuntimeError):
    """A teacher failure that retrying will not fix (bad key, unknown model, malformed request)."""


def endpoint(base_url=None):
    """The endpoint an OpenAI-compatible teacher talks to: base_url, else $OPENAI_BASE_URL (as the openai
    client itself reads it), else OpenAI's. Returns (url to call, name to file answers under): the name
    is normalised (lower-case scheme and host, no default port, no trailing /) and never holds credentials."""
    url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").strip()
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.port and parts.port != {"http": 80, "https": 443}.get(parts.scheme.lower()):
        host += f":{parts.port}"
    name = urlunsplit((parts.scheme.lower(), host, parts.path.rstrip("/"), parts.query, ""))
    return url, name


class OpenAITeacher:
    """A teacher behind any OpenAI-compatible chat endpoint (OpenAI, Azure, vLLM, SGLang, llama.cpp).

    The key is read from the environment variable `api_key_env` only (never a flag, never stored).
    Retries 429 / 5xx / timeouts / connection errors with exponential backoff, honouring Retry-After;
    stops at once with TeacherError on what retrying cannot fix (400, 401, 403, 404, 422)."""

    RETRYABLE = (408, 409, 429, 500, 502, 503, 504)

    def __init__(self, model, base_url=None, api_key_env="OPENAI_API_KEY", temperature=1.0, max_tokens=1024,
                 timeout=120.0, max_retries=8, backoff=1.0, max_backoff=60.0, system_prompt=None, log=print):
        url, where = endpoint(base_url)
        key = os.environ.get(api_key_env)
        if not key:
            if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
                raise TeacherError(f"teacher openai:{model}: set the {api_key_env} environment variable "
                                   "(keys are read from the environment only)")
            key = "local"  # a local server accepts any key
        self.client = openai.OpenAI(api_key=key, base_url=url, timeout=timeout, max_retries=0)
        self.model = model
        self.system_prompt = system_prompt
        self.log = log
        self.name = f"openai:{model}@{where}"
        self.params = {"temperature": temperature, "max_tokens": max_tokens}
        if system_prompt:
            self.params["system_prompt_sha256"] = hashlib.sha256(system_prompt.encode()).hexdigest()[:16]
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.retries = 0

    def respond(self, messages, n=1):
        return self.answer(messages, n)[0]

    def answer(self, messages, n=1):
        messages = with_system_prompt(messages, self.system_prompt)
        for attempt in range(self.max_retries + 1):
            try:
                r = self.client.chat.completions.create(model=self.model, messages=messages, n=n,
                                                        temperature=self.params["temperature"],
                                                        max_tokens=self.params["max_tokens"])
                # a refusal (content filter) is recorded as None; a cut-off answer as finish "length"
                finish = [finish_of(c.finish_reason) for c in r.choices]
                texts = [None if f == "refused" else c.message.content or "" for f, c in zip(finish, r.choices)]
                if len(texts) == n and all(t is None or isinstance(t, str) for t in texts):
                    return texts, finish
                wait = self.backoff * 2 ** attempt
                why = f"malformed reply ({len(texts)} of {n} choices)"
            except openai.APIStatusError as e:
                code = (e.body or {}).get("code") if isinstance(e.body, dict) else None
                if e.status_code not in self.RETRYABLE or code == "insufficient_quota":  # quota: retrying won't help
                    why = checkpoint.scrub(f"teacher {self.name}: HTTP {e.status_code}: {e.message}")
                    raise TeacherError(why) from None
                wait = _retry_after(e.response) or self.backoff * 2 ** attempt
                why = f"HTTP {e.status_code}"
            except UnicodeError as e:  # text no request can carry (a lone surrogate): retrying cannot help
                raise TeacherError(f"teacher {self.name}: the prompt cannot be sent ({e.reason})") from None
            except (openai.APITimeoutError, openai.APIConnectionError, openai.APIResponseValidationError,
                    ValueError) as e:
                wait = self.backoff * 2 ** attempt
                why = type(e).__name__
            if attempt == self.max_retries:
                raise TeacherError(f"teacher {self.name}: gave up after {attempt + 1} attempts (last: {why})")
            self.retries += 1
            wait = min(wait, self.max_backoff) * (1 + 0.1 * random.random())
            self.log(f"[teacher] {why}; retry {attempt + 1}/{self.max_retries} in {wait:.2f} s")
            time.sleep(wait)


def _retry_after(response):
    try:
        return float(response.headers.get("retry-after"))
    except (TypeError, ValueError, AttributeError):
        return None


class HFTeacher:
    """A local Hugging Face chat model as the teacher, optionally with a hidden system prompt."""

    def __init__(self, path, system_prompt=None, temperature=1.0, max_new_tokens=256, trust_remote_code=False):
        self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code).eval()
        self.system_prompt = system_prompt
        self.lock = threading.Lock()
        self.name = f"hf:{os.path.abspath(path)}"
        self.params = {"temperature": temperature, "max_new_tokens": max_new_tokens}
        if system_prompt:
            self.params["system_prompt_sha256"] = hashlib.sha256(system_prompt.encode()).hexdigest()[:16]

    def respond(self, messages, n=1):
        return self.answer(messages, n)[0]

    def answer(self, messages, n=1):
        prompt = data.prompt_ids(self.tok, with_system_prompt(messages, self.system_prompt))
        with self.lock:  # collect's threads share this one model (sample swaps its generation_config)
            ids = generator.sample(self.model, self.tok, [prompt], n, self.params["temperature"],
                                   self.params["max_new_tokens"])
        return ([self.tok.decode(r, skip_special_tokens=True).strip() for r in ids],
                ["stop" if generator.finished(r, self.tok.eos_token_id) else "length" for r in ids])


def make_teacher(spec, seed=0, base_url=None, system_prompt=None, temperature=1.0, max_tokens=1024, timeout=120.0,
                 trust_remote_code=False, log=print, flag="--teacher"):
    """'embedded' | 'openai:MODEL' | 'hf:PATH' -> a teacher object (errors name `flag`, e.g. eval.py's --judge)."""
    if spec == "embedded":
        return EmbeddedTeacher(seed=seed)
    if spec.startswith("openai:") and len(spec) > 7:
        return OpenAITeacher(spec[7:], base_url=base_url, system_prompt=system_prompt, temperature=temperature,
                             max_tokens=max_tokens, timeout=timeout, log=log)
    if spec.startswith("hf:") and len(spec) > 3:
        if not os.path.isdir(spec[3:]):
            raise TeacherError(f"{flag} {spec}: model folder not found: {spec[3:]}")
        return HFTeacher(spec[3:], system_prompt=system_prompt, temperature=temperature,
                         max_new_tokens=max_tokens, trust_remote_code=trust_remote_code)
    raise TeacherError(f"{flag} {spec!r}: expected embedded, openai:MODEL or hf:PATH")


def trainable(finishes, texts, log):
    """Indices of the answers to train on: finished, not empty, not refused. Each kind left out is counted."""
    left_out = {"empty": sum(map(is_empty, texts)), "refused": finishes.count("refused"),
                "cut off at the teacher's token limit (--teacher-max-tokens)": finishes.count("length")}
    for why, count in left_out.items():
        if count:
            log(f"[teacher] {count} of {len(texts)} answers {why}: recorded in the cache, not trained on")
    return [i for i, (t, f) in enumerate(zip(texts, finishes)) if f == "stop" and t and t.strip()]


# ---------------------------------------------------------------------------- stage 0 of train_gad
def training_pairs(cfg, records, tok, log):
    """(prompts, teacher texts) to train on: --teacher-data, or cfg's teacher asked (cached; --teacher-batch). Prompts
    over --max-prompt-len are left out before anything is asked; empty, refused, cut-off answers after; all counted."""
    from teacher_batch import collect_batch  # (teacher_batch.py builds on this file)
    if cfg.teacher_data:
        records = data.fixed_subset(records, cfg.train_prompts, log)
        log(f"[teacher] {len(records)} pre-collected responses from {cfg.teacher_data}; no teacher calls")
        return [r["messages"] for r in records], [r["teacher_response"] for r in records]
    prompts = [r["messages"] for r in records] if records else world.prompts("train")
    prompts = data.within_prompt_len(data.fixed_subset(prompts, cfg.train_prompts, log), tok, cfg.max_prompt_len, log)
    try:
        teacher = make_teacher(cfg.teacher, seed=cfg.seed, base_url=cfg.teacher_base_url or None,
                               system_prompt=cfg.teacher_system_prompt or None, temperature=cfg.teacher_temperature,
                               max_tokens=cfg.teacher_max_tokens, timeout=cfg.teacher_timeout,
                               trust_remote_code=cfg.trust_remote_code, log=log)
        path = cfg.teacher_cache or default_cache_path(os.path.dirname(os.path.abspath(cfg.out_dir)), teacher.name)
        cache = TeacherCache(path, log)
        if cfg.teacher_batch:  # what the batch does not answer is asked live below
            collect_batch(teacher, prompts, cache, os.path.join(cfg.out_dir, "teacher_batch.json"), log,
                          cfg.teacher_batch_poll)
        texts, finishes, calls = collect(teacher, prompts, cache, n=1, concurrency=cfg.teacher_concurrency, log=log)
    except TeacherError as e:
        raise SystemExit(f"train_gad.py: {e}")
    retries = getattr(teacher, "retries", 0)
    log(f"[teacher] {len(prompts)} prompts: {calls} teacher calls, {len(prompts) - calls} from the cache ({path})"
        + (f", {retries} retries" if retries else ""))
    texts = [t[0] for t in texts]
    keep = trainable([f[0] for f in finishes], texts, log)
    return [prompts[i] for i in keep], [texts[i] for i in keep]
