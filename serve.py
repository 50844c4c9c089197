"""A small OpenAI-compatible chat-completions server on 127.0.0.1 in front of a local teacher.

    python serve.py --teacher embedded --port 8000                 # the embedded world's teacher
    python serve.py --teacher hf:models/smollm2 --system-prompt "Answer like a pirate."   # context distillation

It answers POST /v1/chat/completions (with `n`) from any `respond(messages, n)` returning the texts, or
(texts, finishes) like a teacher's `answer` (finish "length" is sent as finish_reason "length"), so a
training run talks to it through the real `openai` client exactly as to a hosted API. For tests it can
inject failures: a scripted list, or a random fraction of: 429 (with Retry-After), 500, a timeout (no answer
for `hang` seconds), truncated JSON, an empty answer; and "quota" (429 insufficient_quota), "refuse",
"length" (finish_reason "length").
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

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
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
                texts = server.respond(body["messages"], body.get("n", 1))
                finishes = ["stop"] * len(texts)
                if isinstance(texts, tuple):  # (texts, finishes) from a teacher's answer()
                    texts, finishes = texts[0], [{"refused": "content_filter"}.get(f, f) for f in texts[1]]
                if fail == "empty":
                    texts = [""] * len(texts)
                if fail in ("refuse", "length"):
                    finishes = [{"refuse": "content_filter", "length": "length"}[fail]] * len(texts)
                with server.lock:
                    server.served += 1
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": i, "finish_reason": reason,
                                              "message": {"role": "assistant", "content": t}}
                                             for i, (t, reason) in enumerate(zip(texts, finishes))],
                                 "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":
    import teacher as T
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="embedded", help="embedded, or hf:PATH (a local HF model folder)")
    ap.add_argument("--system-prompt", default=None, help="hf teacher: a hidden system prompt")
    ap.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1")
    ap.add_argument("--fail-rate", type=float, default=0.0, help="fraction of requests answered 429/500 (testing)")
    a = ap.parse_args()
    teacher = T.make_teacher(a.teacher, system_prompt=a.system_prompt)
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
