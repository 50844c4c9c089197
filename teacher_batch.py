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

from checkpoint import write_json
from teacher import TeacherError, _scrub, cache_key, finish_of, is_empty, to_ask

DONE = ("completed", "failed", "expired", "cancelled")


def collect_batch(teacher, prompts, cache, state_path, log, poll_seconds=30.0):
    """Fill the cache with batch answers for the prompts it lacks. Returns how many answers the batch gave."""
    try:
        return _collect_batch(teacher, prompts, cache, state_path, log, poll_seconds)
    except openai.APIError as e:  # a rejected upload or batch, a bad key, an unreachable endpoint
        raise TeacherError(_scrub(f"teacher {teacher.name}: batch API: {type(e).__name__}: {e}")) from None


def _collect_batch(teacher, prompts, cache, state_path, log, poll_seconds):
    params = {**teacher.params, "n": 1}
    by_key = {cache_key(teacher.name, m, params): m for m in prompts}
    state = json.load(open(state_path)) if os.path.exists(state_path) else None
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
    batch = wait(teacher.client, state["batch_id"], len(state["keys"]), poll_seconds, log)
    stored = store(teacher, batch, cache, by_key, params)
    log(f"[teacher] batch {batch.id} {batch.status}: {stored} of {len(state['keys'])} answers stored in the cache"
        + ("; the rest is asked live" if stored < len(state["keys"]) else ""))
    os.remove(state_path)
    return stored


def requests_file(teacher, keys, by_key):
    """The batch input: one /v1/chat/completions request per line, the same request a live call makes."""
    lines = []
    for key in keys:
        messages = by_key[key]
        if teacher.system_prompt:
            messages = [{"role": "system", "content": teacher.system_prompt}] + list(messages)
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


def wait(client, batch_id, total, poll_seconds, log):
    """Poll until the batch is done; a progress bar of the requests answered so far."""
    with tqdm(total=total, desc=f"batch {batch_id}", disable=None) as bar:
        while True:
            batch = client.batches.retrieve(batch_id)
            counts = batch.request_counts
            if counts is not None:
                bar.n = counts.completed + counts.failed
                bar.refresh()
            if batch.status in DONE:
                return batch
            time.sleep(poll_seconds)


def store(teacher, batch, cache, by_key, params):
    """The output file's answers into the cache (refusals and cut-off answers too, marked as such)."""
    if not batch.output_file_id:
        return 0
    stored = 0
    for line in teacher.client.files.content(batch.output_file_id).text.splitlines():
        item = json.loads(line) if line.strip() else {}
        response, key = item.get("response") or {}, item.get("custom_id")
        if key not in by_key or response.get("status_code") != 200:
            continue
        choice = response["body"]["choices"][0]
        finish = finish_of(choice.get("finish_reason"))
        text = None if finish == "refused" else (choice.get("message") or {}).get("content") or ""
        if is_empty(text):
            continue  # an empty answer is asked again live, as collect does
        cache.put(key, teacher.name, by_key[key], params, [text], [finish])
        stored += 1
    return stored
