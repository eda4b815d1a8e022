"""A receiver of the server's HTTP hooks, as a team would run one."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HookReceiver:
    """A receiver of tusd-format HTTP hooks on a free port, as a team would run one.

    Records every POST (its JSON and headers, and when it came) and answers
    what ``answer(payload)`` returns: a dict sent as JSON with status 200, or
    an int status with an empty body. Unset, it answers ``{}``.
    """

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.lock = threading.Lock()
        self.answer = lambda payload: {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                payload = json.loads(body)
                with receiver.lock:
                    receiver.received.append({
                        "payload": payload,
                        "headers": dict(self.headers.items()),
                        "at": time.monotonic(),
                    })
                answer = receiver.answer(payload)
                if isinstance(answer, int):
                    self.send_response(answer)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, kind: str | None = None, upload_id: str | None = None) -> list[dict]:
        with self.lock:
            found = list(self.received)
        return [
            event for event in found
            if (kind is None or event["payload"]["Type"] == kind)
            and (upload_id is None or event["payload"]["Event"]["Upload"]["ID"] == upload_id)
        ]

    def clear(self) -> None:
        with self.lock:
            self.received.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
