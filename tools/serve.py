"""A small OpenAI-compatible chat-completions server on 127.0.0.1 in front of a local teacher.

    python tools/serve.py --teacher embedded --port 8000                 # the embedded world's teacher
    python tools/serve.py --teacher hf:models/smollm2 --system-prompt "Answer like a pirate."   # context distillation

It answers POST /v1/chat/completions (with `n`) from any `respond(messages, n)` returning the texts, or
(texts, finishes) like a teacher's `answer` (finish "length" is sent as finish_reason "length"), so a
training run talks to it through the real `openai` client exactly as to a hosted API. For tests it can
inject failures: a scripted list, or a random fraction of: 429 (with Retry-After), 500, a timeout (no answer
for `hang` seconds), truncated JSON, an empty answer; and "quota" (429 insufficient_quota), "refuse",
"length" (finish_reason "length").
It also speaks the Batch API's files and batches endpoints (upload, create, retrieve, output content): a
batch stays "in_progress" for `batch_polls` retrieves, then completes (or, with `batch_expire`, expires with
only its first half answered), its answers made by the same respond. For tests, `poll_failures` makes the next
retrieves answer 500 and `batch_output` rewrites a finished batch's output lines.
It only ever binds 127.0.0.1.
"""
import argparse
import collections
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class TeacherServer:
    RANDOM_FAILURES = (429, 500, "timeout", "truncated", "empty")

    def __init__(self, respond, fail_script=(), fail_rate=0.0, seed=0, api_key=None, port=0, hang=2.0):
        self.respond, self.fail_script, self.fail_rate, self.hang = respond, list(fail_script), fail_rate, hang
        self.rng, self.api_key = random.Random(seed), api_key
        self.requests, self.served, self.lock = [], 0, threading.Lock()
        self.injected = collections.Counter()  # failures injected so far, by kind
        self.files, self.batches, self.batch_polls, self.batch_expire = {}, {}, 0, False
        self.poll_failures = 0        # the next this many batch retrieves answer HTTP 500
        self.batch_output = None      # tests: a function rewriting a finished batch's output lines (list of str)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _send_bytes(self, data):
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # the Batch API: a batch's state, a file's content
                parts = self.path.rstrip("/").split("/")
                with server.lock:
                    server.requests.append({"path": self.path, "body": None, "auth": self.headers.get("Authorization")})
                    if len(parts) >= 2 and parts[-2] == "batches" and parts[-1] in server.batches:
                        if server.poll_failures > 0:
                            server.poll_failures -= 1
                            return self._send(500, {"error": {"message": "injected 500"}})
                        return self._send(200, server.poll_batch(parts[-1]))
                    if parts[-1] == "content" and parts[-2] in server.files:
                        return self._send_bytes(server.files[parts[-2]])
                return self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path.endswith("/files"):  # multipart upload of a batch input file
                    with server.lock:
                        server.requests.append({"path": self.path, "body": None,
                                                "auth": self.headers.get("Authorization")})
                        return self._send(200, server.add_file(_multipart_file(raw, self.headers["Content-Type"])))
                body = json.loads(raw)
                if self.path.endswith("/batches"):
                    with server.lock:
                        server.requests.append({"path": self.path, "body": body,
                                                "auth": self.headers.get("Authorization")})
                        return self._send(200, server.add_batch(body))
                with server.lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "auth": self.headers.get("Authorization")})
                    fail = server.fail_script.pop(0) if server.fail_script else None
                    if fail is None and server.fail_rate and server.rng.random() < server.fail_rate:
                        fail = server.rng.choice(server.RANDOM_FAILURES)
                    server.injected[fail] += fail is not None
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._send(401, {"error": {"message": "invalid api key", "type": "auth"}})
                if fail == 429:
                    return self._send(429, {"error": {"message": "rate limited"}}, [("Retry-After", "0.01")])
                if fail == "quota":
                    return self._send(429, {"error": {"message": "You exceeded your current quota",
                                                      "code": "insufficient_quota"}})
                if fail == "timeout":
                    time.sleep(server.hang)
                    return
                if fail == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"id": "x", "object": "chat.completion", "choi')
                    self.close_connection = True
                    return
                if isinstance(fail, int):
                    return self._send(fail, {"error": {"message": f"injected {fail}"}})
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                texts, finishes = server.answer(body["messages"], body.get("n", 1))
                if fail == "empty":
                    texts = [""] * len(texts)
                if fail in ("refuse", "length"):
                    finishes = [{"refuse": "content_filter", "length": "length"}[fail]] * len(texts)
                with server.lock:
                    server.served += 1
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": _choices(texts, finishes),
                                 "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, messages, n):
        """(texts, OpenAI finish reasons) from respond, which returns texts or a teacher's (texts, finishes)."""
        texts = self.respond(messages, n)
        if isinstance(texts, tuple):
            return texts[0], [{"refused": "content_filter"}.get(f, f) for f in texts[1]]
        return texts, ["stop"] * len(texts)

    # ------------------------------------------------------------------------ the Batch API (under self.lock)
    def add_file(self, data, purpose="batch"):
        file_id = f"file-{len(self.files)}"
        self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": 0, "filename": "input.jsonl",
                "purpose": purpose, "status": "processed"}

    def add_batch(self, body):
        batch_id = f"batch_{len(self.batches)}"
        lines = [json.loads(x) for x in self.files[body["input_file_id"]].decode().split("\n") if x.strip()]
        self.batches[batch_id] = {"id": batch_id, "object": "batch", "endpoint": body["endpoint"], "errors": None,
                                  "input_file_id": body["input_file_id"],
                                  "completion_window": body["completion_window"],
                                  "status": "in_progress", "created_at": 0, "output_file_id": None,
                                  "error_file_id": None, "polls": 0, "lines": lines,
                                  "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
        return self.public(batch_id)

    def public(self, batch_id):
        return {k: v for k, v in self.batches[batch_id].items() if k not in ("polls", "lines")}

    def poll_batch(self, batch_id):
        """One retrieve: after batch_polls of them the batch answers (all, or half when it expires)."""
        b = self.batches[batch_id]
        b["polls"] += 1
        if b["status"] == "in_progress" and b["polls"] > self.batch_polls:
            todo = b["lines"][:len(b["lines"]) // 2] if self.batch_expire else b["lines"]
            out = []
            for req in todo:
                choices = _choices(*self.answer(req["body"]["messages"], req["body"].get("n", 1)))
                out.append(json.dumps({"id": f"req_{len(out)}", "custom_id": req["custom_id"], "error": None,
                                       "response": {"status_code": 200, "request_id": "r", "body": {
                                           "id": "x", "object": "chat.completion", "choices": choices}}}))
            out = self.batch_output(out) if self.batch_output else out
            b["output_file_id"] = self.add_file(("\n".join(out) + "\n").encode(), "batch_output")["id"]
            b["status"] = "expired" if self.batch_expire else "completed"
            b["request_counts"]["completed"] = len(out)
        return self.public(batch_id)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()


def _choices(texts, finishes):
    return [{"index": i, "finish_reason": reason, "message": {"role": "assistant", "content": t}}
            for i, (t, reason) in enumerate(zip(texts, finishes))]


def _multipart_file(raw, content_type):
    """The bytes of the `file` field of a multipart/form-data body."""
    boundary = content_type.split("boundary=")[1].strip('"').encode()
    for part in raw.split(b"--" + boundary):
        head, _, data = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return data[:-2] if data.endswith(b"\r\n") else data
    raise ValueError("no file field in the upload")


if __name__ == "__main__":
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root
    import teacher as T
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="embedded", help="embedded, or hf:PATH (a local HF model folder)")
    ap.add_argument("--system-prompt", default=None, help="hf teacher: a hidden system prompt")
    ap.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1")
    ap.add_argument("--max-tokens", type=int, default=1024, help="hf teacher: answer limit in new tokens")
    ap.add_argument("--temperature", type=float, default=1.0, help="hf teacher: sampling temperature")
    ap.add_argument("--fail-rate", type=float, default=0.0, help="fraction of requests answered 429/500 (testing)")
    a = ap.parse_args()
    teacher = T.make_teacher(a.teacher, system_prompt=a.system_prompt, temperature=a.temperature,
                             max_tokens=a.max_tokens)
    lock = threading.Lock()

    def respond(messages, n):
        with lock:
            return teacher.answer(messages, n)
    server = TeacherServer(respond, fail_rate=a.fail_rate, port=a.port)
    with server:
        print(f"serving {teacher.name} at {server.url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
