"""Teacher collection through the OpenAI Batch API (`train_gad.py --teacher openai:MODEL --teacher-batch`).

Providers answer a batch within a window (up to 24 hours) at about half the price of live calls: the right
trade for a large offline collection (the paper's 200k teacher answers), the wrong one for a quick try.

    collect_batch(teacher, prompts, cache, state_path, log, poll_seconds)

1. the prompts missing from the teacher cache become one JSONL file of /v1/chat/completions requests
   (custom_id = the answer's cache key), uploaded (`files.create`, purpose "batch") and submitted
   (`batches.create`);
2. the batch id is written to state_path (the run folder's teacher_batch.json) *before* any waiting, so a
   killed run, started again, resumes the same batch instead of paying for it again;
3. `batches.retrieve` is polled every poll_seconds, with a progress bar, until the batch is completed,
   failed, expired or cancelled;
4. every answer of the output file goes into the same teacher cache as live answers; what the batch did not
   answer (failed items, or the rest of an expired or cancelled batch) is left to `teacher.collect`, which
   asks for it live, with its retries. state_path is removed once the answers are stored.
"""
import io
import json
import os
import time

import openai
from tqdm import tqdm

from checkpoint import scrub, write_json
from teacher import TeacherError, cache_key, finish_of, is_empty, to_ask, with_system_prompt

DONE = ("completed", "failed", "expired", "cancelled")


def collect_batch(teacher, prompts, cache, state_path, log, poll_seconds=30.0):
    """Fill the cache with batch answers for the prompts it lacks. Returns how many answers the batch gave."""
    try:
        return _collect_batch(teacher, prompts, cache, state_path, log, poll_seconds)
    except openai.APIError as e:  # a rejected upload or batch, a bad key, an unreachable endpoint
        raise TeacherError(scrub(f"teacher {teacher.name}: batch API: {type(e).__name__}: {e}")) from None


def _collect_batch(teacher, prompts, cache, state_path, log, poll_seconds):
    params = {**teacher.params, "n": 1}
    by_key = {cache_key(teacher.name, m, params): m for m in prompts}
    try:
        state = json.load(open(state_path)) if os.path.exists(state_path) else None
    except (OSError, ValueError):
        raise TeacherError(f"{state_path}: cannot be read (damaged?); remove it to submit a new batch") from None
    if state and state["teacher"] != teacher.name:
        raise SystemExit(f"train_gad.py: {state_path} holds a batch for {state['teacher']}, not {teacher.name}; "
                         "remove the file to submit a new batch")
    if state is None:
        missing = to_ask(cache, list(by_key))
        if not missing:
            return 0
        state = submit(teacher, missing, by_key, state_path)
        log(f"[teacher] submitted batch {state['batch_id']}: {len(missing)} requests (recorded in {state_path})")
    else:
        log(f"[teacher] resuming batch {state['batch_id']} from {state_path}: nothing new is submitted")
    batch = wait(teacher, state["batch_id"], len(state["keys"]), poll_seconds, log, state_path)
    stored = store(teacher, batch, cache, by_key, params, log)
    log(f"[teacher] batch {batch.id} {batch.status}: {stored} of {len(state['keys'])} answers stored in the cache"
        + ("; the rest is asked live" if stored < len(state["keys"]) else ""))
    os.remove(state_path)
    return stored


def requests_file(teacher, keys, by_key):
    """The batch input: one /v1/chat/completions request per line, the same request a live call makes."""
    lines = []
    for key in keys:
        messages = with_system_prompt(by_key[key], teacher.system_prompt)
        lines.append(json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                                 "body": {"model": teacher.model, "messages": messages, "n": 1,
                                          "temperature": teacher.params["temperature"],
                                          "max_tokens": teacher.params["max_tokens"]}}))
    return ("\n".join(lines) + "\n").encode()


def submit(teacher, keys, by_key, state_path):
    data = io.BytesIO(requests_file(teacher, keys, by_key))
    upload = teacher.client.files.create(file=("gad_teacher_batch.jsonl", data), purpose="batch")
    batch = teacher.client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
    state = {"batch_id": batch.id, "input_file_id": upload.id, "teacher": teacher.name, "keys": keys}
    write_json(state_path, state)  # before any waiting: a killed run resumes this batch
    return state


def wait(teacher, batch_id, total, poll_seconds, log, state_path="teacher_batch.json"):
    """Poll until the batch is done; a progress bar of the requests answered so far. A transient failure of a look
    (429, 5xx, a timeout, a dropped connection) is retried with backoff (the teacher's retry budget, counted anew
    after each good look): a run that has waited hours does not end on one bad answer."""
    failures = 0
    with tqdm(total=total, desc=f"batch {batch_id}", disable=None) as bar:
        while True:
            try:
                batch = teacher.client.batches.retrieve(batch_id)
                failures = 0
            except openai.NotFoundError:
                raise TeacherError(f"teacher {teacher.name}: batch {batch_id} (recorded in {state_path}) is not known "
                                   f"to this endpoint (404); remove {state_path} to submit a new batch") from None
            except (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                    openai.InternalServerError) as e:
                failures += 1
                if failures > teacher.max_retries:
                    raise
                pause = min(teacher.backoff * 2 ** (failures - 1), teacher.max_backoff)
                log(f"[teacher] batch {batch_id}: {type(e).__name__} while polling; look {failures}/"
                    f"{teacher.max_retries} again in {pause:.1f} s")
                time.sleep(pause)
                continue
            counts = batch.request_counts
            if counts is not None:
                bar.n = counts.completed + counts.failed
                bar.refresh()
            if batch.status in DONE:
                return batch
            time.sleep(poll_seconds)


def store(teacher, batch, cache, by_key, params, log=print):
    """The output file's answers into the cache (refusals and cut-off answers too, marked as such). An item that
    cannot be read (malformed line, no choices, no body, content not text) is logged and left to the live path;
    every answer that parses is kept (it is paid for). Returns how many distinct prompts got an answer."""
    if not batch.output_file_id:
        return 0
    stored = set()
    bad = 0
    for line in teacher.client.files.content(batch.output_file_id).text.split("\n"):  # "\n" only: an answer may
        if not line.strip():                                                          # hold U+2028 and the like
            continue
        try:
            item = parse_item(json.loads(line))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            bad += 1
            continue
        if item is None:  # a failed request: asked live
            continue
        key, text, finish = item
        if key not in by_key or key in stored or is_empty(text):
            continue  # another run's item, a repeated one, or an empty answer (asked again live, as collect does)
        cache.put(key, teacher.name, by_key[key], params, [text], [finish])
        stored.add(key)
    if bad:
        log(f"[teacher] batch {batch.id}: {bad} output line(s) could not be read; those prompts are asked live")
    return len(stored)


def parse_item(item):
    """(custom_id, text or None for a refusal, finish) of one output line, None for a request that failed; ValueError
    (or a lookup error) if the line is not a chat completion with text."""
    response = item.get("response") or {}
    if response.get("status_code") != 200:
        return None
    choice = response["body"]["choices"][0]
    finish = finish_of(choice.get("finish_reason"))
    text = None if finish == "refused" else (choice.get("message") or {}).get("content") or ""
    if not (text is None or isinstance(text, str)) or not isinstance(item["custom_id"], str):
        raise ValueError("content is not text")
    return item["custom_id"], text, finish
