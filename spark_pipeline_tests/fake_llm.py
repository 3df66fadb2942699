"""A loopback HTTP server that speaks the OpenAI chat-completions and Anthropic Messages
protocols, for testing the LLM judge without a hosted model.

Its answers are deterministic: for a "choose" prompt it picks the first listed candidate and
adds one that does not exist (the judge must drop it); for a validation prompt it says
"implemented". ``mode`` can make it rate-limit the first request or answer with prose.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeLLM:
    def __init__(self, mode: str = "normal"):
        self.mode = mode
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                with owner._lock:
                    owner.requests.append({"path": self.path, "body": body})
                    owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                    count = len(owner.requests)
                if owner.mode == "server_error":
                    self._send(500, {"error": {"message": "overloaded"}})
                    return
                if owner.mode == "rate_limit_first" and count == 1:
                    self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                    return
                if self.path.endswith("/chat/completions"):
                    prompt = body["messages"][-1]["content"]
                    text = owner.answer(prompt)
                    self._send(200, {"id": f"c{count}", "object": "chat.completion", "model": body["model"],
                                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                  "finish_reason": "stop"}],
                                     "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": 7,
                                               "total_tokens": len(prompt) // 4 + 7}})
                elif self.path.endswith("/v1/messages"):
                    prompt = body["messages"][-1]["content"]
                    text = owner.answer(prompt)
                    self._send(200, {"id": f"m{count}", "type": "message", "role": "assistant", "model": body["model"],
                                     "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                     "usage": {"input_tokens": len(prompt) // 4, "output_tokens": 5}})
                else:
                    self._send(404, {"error": "unknown path"})

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, prompt: str) -> str:
        if self.mode == "prose":
            return "I think the first one looks right."
        if "Datasheet section" not in prompt:  # a code-completion request from the evaluation
            return "```c\n    return 0;\n}\n```"
        if "Is this section implemented" in prompt:
            return '```json\n{"status": "implemented", "evidence": ["the fake model agrees"]}\n```'
        listed = re.findall(r"^- (\S+)", prompt, re.M)
        choice = [{"name": listed[0], "score": 0.9, "reason": "first listed"}] if listed else []
        choice.append({"name": "does/not/exist.c", "score": 0.8, "reason": "invented"})
        choice.append({"name": "NOT_A_SYMBOL", "score": 0.7, "reason": "invented"})
        return json.dumps({"selected": choice})

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
