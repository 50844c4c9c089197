"""The black-box teacher: chat messages in, response *text* out -- nothing else (no logits, no tokens).

A teacher is any object with
    name: str                                  identifies the model and endpoint (part of the cache key)
    params: dict                               sampling parameters (part of the cache key)
    answer(messages, n) -> (texts, finishes)   n responses to one prompt; finish is "stop", "length" (cut
                                               off at the teacher's token limit) or "refused" (text None)
    respond(messages, n) -> texts              the texts alone

Teachers here (`make_teacher(spec)`):
    embedded          the embedded world's teacher program (world.py)
    openai:MODEL      any OpenAI-compatible chat endpoint (--teacher-base-url; key from the environment)
    hf:PATH           a local Hugging Face chat model, optionally with a hidden system prompt
                      ("context distillation": the student learns the behaviour without the prompt)
Pre-collected pairs in the paper's format are read by data.py instead (`--teacher-data`).

`TeacherCache` keeps every collected response on disk (JSONL, one line per prompt), keyed by a hash of
(teacher name, messages, params), so a response is never paid for twice and an interrupted collection
resumes where it stopped. One cache per teacher is shared by every run under the same runs/ folder
(`default_cache_path`). `collect` is the only way training reads the teacher. Its policy:
  - an empty or whitespace-only answer is a transient failure: asked again (EMPTY_RETRIES times), and
    asked again on the next collection if it is still empty in the cache;
  - a refusal (finish "refused") and an answer cut off by the teacher's token limit ("length") are
    recorded as such and never asked again; training leaves both out and counts them in the log.
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


def cache_key(teacher_name, messages, params):
    blob = json.dumps({"teacher": teacher_name, "messages": messages, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def default_cache_path(runs_dir, teacher_name):
    """One cache file per teacher, shared by the runs under runs_dir: runs_dir/.teacher_cache/<teacher>.jsonl."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", teacher_name)[:60]
    return os.path.join(runs_dir, ".teacher_cache", f"{slug}-{hashlib.sha256(teacher_name.encode()).hexdigest()[:8]}.jsonl")


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
    """Append-only JSONL: {"key", "teacher", "messages", "params", "responses", "finish"} per line.

    Each line is one write under an exclusive file lock (runs running side by side may share the file),
    flushed to disk, so a crash loses at most the line being written. A torn last line (a crash mid-write,
    by this run or another) is cut off before the next append, so it never swallows the next record, and
    only that one answer is asked again; it is reported once (`torn_lines`). A file whose first line is
    not a cache record (a user's data file given as --teacher-cache) is refused, never changed. A complete
    cache on a read-only mount is read and used as is; only a missing answer needs the file writable."""

    def __init__(self, path, log=None):
        self.path, self.log = path, log
        self.entries, self.torn_lines, self.offset = {}, 0, 0
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
            lines, tail = data[:end].split(b"\n")[:-1], data[end:]
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
                self.entries[rec["key"]] = (rec["responses"], rec.get("finish") or
                                            ["refused" if t is None else "stop" for t in rec["responses"]])
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
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        rec = {"key": key, "teacher": teacher, "messages": messages, "params": params, "responses": responses,
               "finish": finish}
        line = (json.dumps(rec) + "\n").encode("utf-8")
        with self.lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":  # a fragment another writer left: cut it off
                    os.ftruncate(fd, size - len(_last_line(fd, size)))
                    self.torn_lines += 1
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.entries[key] = (responses, finish)


def _record(line):
    """The cache record a line holds, or None."""
    try:
        rec = json.loads(line.decode("utf-8"))
        return rec if isinstance(rec, dict) and isinstance(rec.get("key"), str) and "responses" in rec else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _record_start(fragment):
    """Whether bytes can be the start of a cache line (a torn one)."""
    return fragment.startswith(RECORD_START) or RECORD_START.startswith(fragment)


def _last_line(fd, size, block=1 << 16):
    """The bytes after the file's last newline."""
    start = max(0, size - block)
    while True:
        data = os.pread(fd, size - start, start)
        cut = data.rfind(b"\n")
        if cut >= 0 or start == 0:
            return data[cut + 1:]
        start = max(0, start - block)


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

    t0, done = time.time(), 0
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


def _scrub(text):
    """Remove any API key found in the environment, and any user:password in a URL, from a message."""
    for var, key in os.environ.items():
        if var.endswith("API_KEY") and len(key) >= 4:
            text = text.replace(key, "***")
    return redact_url(text)


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


def redact_url(url):
    """A URL with any user:password replaced by ***, for config.json and logs."""
    return re.sub(r"//[^/@\s]+@", "//***@", url) if url else url


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
        self.model, self.system_prompt, self.log = model, system_prompt, log
        self.name = f"openai:{model}@{where}"
        self.params = {"temperature": temperature, "max_tokens": max_tokens}
        if system_prompt:
            self.params["system_prompt_sha256"] = hashlib.sha256(system_prompt.encode()).hexdigest()[:16]
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.retries = 0

    def respond(self, messages, n=1):
        return self.answer(messages, n)[0]

    def answer(self, messages, n=1):
        if self.system_prompt:
            messages = [{"role": "system", "content": self.system_prompt}] + list(messages)
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
                wait, why = self.backoff * 2 ** attempt, f"malformed reply ({len(texts)} of {n} choices)"
            except openai.APIStatusError as e:
                code = (e.body or {}).get("code") if isinstance(e.body, dict) else None
                if e.status_code not in self.RETRYABLE or code == "insufficient_quota":  # quota: retrying won't help
                    raise TeacherError(_scrub(f"teacher {self.name}: HTTP {e.status_code}: {e.message}")) from None
                wait, why = _retry_after(e.response) or self.backoff * 2 ** attempt, f"HTTP {e.status_code}"
            except UnicodeError as e:  # text no request can carry (a lone surrogate): retrying cannot help
                raise TeacherError(f"teacher {self.name}: the prompt cannot be sent ({e.reason})") from None
            except (openai.APITimeoutError, openai.APIConnectionError, openai.APIResponseValidationError,
                    ValueError) as e:
                wait, why = self.backoff * 2 ** attempt, type(e).__name__
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
        self.name = f"hf:{os.path.abspath(path)}"
        self.params = {"temperature": temperature, "max_new_tokens": max_new_tokens}
        if system_prompt:
            self.params["system_prompt_sha256"] = hashlib.sha256(system_prompt.encode()).hexdigest()[:16]

    def respond(self, messages, n=1):
        return self.answer(messages, n)[0]

    def answer(self, messages, n=1):
        if self.system_prompt:
            messages = [{"role": "system", "content": self.system_prompt}] + list(messages)
        ids = generator.sample(self.model, self.tok, [generator.prompt_ids(self.tok, messages)], n,
                               self.params["temperature"], self.params["max_new_tokens"])
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
