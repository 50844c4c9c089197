"""The black-box teacher: chat messages in, response *text* out -- nothing else (no logits, no tokens).

A teacher is any object with
    name: str                                  identifies the model (part of the cache key)
    params: dict                               sampling parameters (part of the cache key)
    respond(messages, n) -> list[str]          n responses to one prompt

Teachers here (`make_teacher(spec)`):
    embedded          the embedded world's teacher program (world.py)
    openai:MODEL      any OpenAI-compatible chat endpoint (--teacher-base-url; key from the environment)
    hf:PATH           a local Hugging Face chat model, optionally with a hidden system prompt
                      ("context distillation": the student learns the behaviour without the prompt)
Pre-collected pairs in the paper's format are read by data.py instead (`--teacher-data`).

`TeacherCache` keeps every collected response on disk (JSONL, one line per prompt), keyed by a hash of
(teacher name, messages, params), so a response is never paid for twice and an interrupted collection
resumes where it stopped. `collect` is the only way training reads the teacher.
"""
import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

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
        self.lock = threading.Lock()
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
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
            self.entries[key] = responses


def collect(teacher, prompts, cache, n=1, concurrency=1, log=None):
    """Teacher responses for every prompt: from the cache where present, else asked once and cached.

    Up to `concurrency` requests are in flight at once; each answer is cached the moment it arrives, so
    an interrupted collection loses nothing and a rerun asks only for what is missing.
    Returns (responses: list of n-lists of str, aligned with prompts; calls: number of teacher calls)."""
    params = {**teacher.params, "n": n}
    keys = [cache_key(teacher.name, m, params) for m in prompts]
    missing = list(dict.fromkeys(k for k in keys if cache.get(k) is None))
    by_key = dict(zip(keys, prompts))

    def ask(key):
        responses = teacher.respond(by_key[key], n)
        cache.put(key, teacher.name, by_key[key], params, responses)

    t0, done = time.time(), 0
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(ask, k) for k in missing]
        try:
            for fut in as_completed(futures):
                fut.result()  # re-raises a TeacherError: the run stops with a clear message
                done += 1
                if log and (done % 100 == 0 or done == len(missing)):
                    log(f"[teacher] {done}/{len(missing)} collected ({time.time() - t0:.0f} s)")
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return [cache.get(k) for k in keys], len(missing)


class TeacherError(RuntimeError):
    """A teacher failure that retrying will not fix (bad key, unknown model, malformed request)."""


def _scrub(text):
    """Remove any API key found in the environment from a message before it is logged or raised."""
    for var, key in os.environ.items():
        if var.endswith("API_KEY") and len(key) >= 4:
            text = text.replace(key, "***")
    return text


class OpenAITeacher:
    """A teacher behind any OpenAI-compatible chat endpoint (OpenAI, Azure, vLLM, SGLang, llama.cpp).

    The key is read from the environment variable `api_key_env` only (never a flag, never stored).
    Retries 429 / 5xx / timeouts / connection errors with exponential backoff, honouring Retry-After;
    stops at once with TeacherError on what retrying cannot fix (400, 401, 403, 404, 422)."""

    RETRYABLE = (408, 409, 429, 500, 502, 503, 504)

    def __init__(self, model, base_url=None, api_key_env="OPENAI_API_KEY", temperature=1.0, max_tokens=1024,
                 timeout=120.0, max_retries=8, backoff=1.0, max_backoff=60.0, system_prompt=None, log=print):
        import openai
        key = os.environ.get(api_key_env)
        if not key:
            if not (base_url and ("//127.0.0.1" in base_url or "//localhost" in base_url)):
                raise TeacherError(f"teacher openai:{model}: set the {api_key_env} environment variable "
                                   "(keys are read from the environment only)")
            key = "local"  # a local server accepts any key
        self.client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=0)
        self.model, self.system_prompt, self.log = model, system_prompt, log
        self.name = f"openai:{model}@{base_url or 'api.openai.com'}"
        self.params = {"temperature": temperature, "max_tokens": max_tokens}
        if system_prompt:
            self.params["system_prompt_sha256"] = hashlib.sha256(system_prompt.encode()).hexdigest()[:16]
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.retries = 0

    def respond(self, messages, n=1):
        import openai
        if self.system_prompt:
            messages = [{"role": "system", "content": self.system_prompt}] + list(messages)
        for attempt in range(self.max_retries + 1):
            try:
                r = self.client.chat.completions.create(model=self.model, messages=messages, n=n,
                                                        temperature=self.params["temperature"],
                                                        max_tokens=self.params["max_tokens"])
                # a refusal (content filter) is recorded as None: kept in the cache, excluded from training
                texts = [None if c.finish_reason == "content_filter" else c.message.content for c in r.choices]
                if len(texts) == n and all(t is None or isinstance(t, str) for t in texts):
                    return texts
                wait, why = self.backoff * 2 ** attempt, f"malformed reply ({len(texts)} of {n} choices)"
            except openai.APIStatusError as e:
                code = (e.body or {}).get("code") if isinstance(e.body, dict) else None
                if e.status_code not in self.RETRYABLE or code == "insufficient_quota":  # quota: retrying won't help
                    raise TeacherError(_scrub(f"teacher {self.name}: HTTP {e.status_code}: {e.message}")) from None
                wait, why = _retry_after(e.response) or self.backoff * 2 ** attempt, f"HTTP {e.status_code}"
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
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code).eval()
        self.system_prompt = system_prompt
        self.name = f"hf:{os.path.abspath(path)}"
        self.params = {"temperature": temperature, "max_new_tokens": max_new_tokens}
        if system_prompt:
            self.params["system_prompt_sha256"] = hashlib.sha256(system_prompt.encode()).hexdigest()[:16]

    def respond(self, messages, n=1):
        import generator as G
        if self.system_prompt:
            messages = [{"role": "system", "content": self.system_prompt}] + list(messages)
        ids = G.sample(self.model, self.tok, [G.prompt_ids(self.tok, messages)], n,
                       self.params["temperature"], self.params["max_new_tokens"])
        return [self.tok.decode(r, skip_special_tokens=True).strip() for r in ids]


def make_teacher(spec, seed=0, base_url=None, system_prompt=None, temperature=1.0, max_tokens=1024, timeout=120.0,
                 trust_remote_code=False, log=print):
    """'embedded' | 'openai:MODEL' | 'hf:PATH' -> a teacher object."""
    if spec == "embedded":
        return EmbeddedTeacher(seed=seed)
    if spec.startswith("openai:") and len(spec) > 7:
        return OpenAITeacher(spec[7:], base_url=base_url, system_prompt=system_prompt, temperature=temperature,
                             max_tokens=max_tokens, timeout=timeout, log=log)
    if spec.startswith("hf:") and len(spec) > 3:
        if not os.path.isdir(spec[3:]):
            raise TeacherError(f"--teacher {spec}: model folder not found: {spec[3:]}")
        return HFTeacher(spec[3:], system_prompt=system_prompt, temperature=temperature,
                         max_new_tokens=max_tokens, trust_remote_code=trust_remote_code)
    raise TeacherError(f"--teacher {spec!r}: expected embedded, openai:MODEL or hf:PATH")


# ---------------------------------------------------------------------------- stage 0 of train_gad.py
def read_data_files(cfg):
    """The data files, checked row by row before anything else runs: (records or None)."""
    import data as DATA
    if cfg.teacher_data:
        return DATA.load_records(cfg.teacher_data, need_response=True)
    return DATA.load_records(cfg.prompts) if cfg.prompts else None


def training_pairs(cfg, records, log):
    """(prompts, teacher texts) -- stage 0: from --teacher-data, or by asking the teacher (cached)."""
    if cfg.teacher_data:
        log(f"[teacher] {len(records)} pre-collected responses from {cfg.teacher_data}; no teacher calls")
        return [r["messages"] for r in records], [r["teacher_response"] for r in records]
    prompts = [r["messages"] for r in records] if records else world.prompts("train")
    teacher = make_teacher(cfg.teacher, seed=cfg.seed, base_url=cfg.teacher_base_url or None,
                             system_prompt=cfg.teacher_system_prompt or None, temperature=cfg.teacher_temperature,
                             max_tokens=cfg.teacher_max_tokens, timeout=cfg.teacher_timeout,
                             trust_remote_code=cfg.trust_remote_code, log=log)
    cache = TeacherCache(os.path.join(cfg.out_dir, "teacher_cache.jsonl"))
    if cache.torn_lines:
        log(f"[teacher] skipped {cache.torn_lines} torn line(s) in the cache (an interrupted write)")
    responses, calls = collect(teacher, prompts, cache, n=1, concurrency=cfg.teacher_concurrency, log=log)
    retries = getattr(teacher, "retries", 0)
    log(f"[teacher] {len(prompts)} prompts: {calls} teacher calls, {len(prompts) - calls} from the cache"
        + (f", {retries} retries" if retries else ""))
    texts = [r[0] for r in responses]
    unusable = sum(1 for t in texts if not t or not t.strip())
    if unusable:
        log(f"[teacher] {unusable} of {len(texts)} answers are empty or refused: recorded, not trained on")
    return prompts, texts
