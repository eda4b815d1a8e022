"""S3 for the S3 store's tests: moto's API server, and a proxy that injects S3's faults."""

from __future__ import annotations

import http.client
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from .processes import free_port


def s3_client(endpoint: str):  # noqa: ANN201 - a boto3 client
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


class MotoS3:
    """moto's S3 API server (``ThreadedMotoServer``) on a free loopback port.

    Servers started by the tests find credentials in the environment, as
    boto3's standard chain reads them; moto accepts any.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.server = None
        self.buckets = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            os.environ.setdefault(name, value)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        return self

    def new_bucket(self) -> str:
        self.buckets += 1
        name = f"uploads-{self.port}-{self.buckets}"
        s3_client(self.endpoint).create_bucket(Bucket=name)
        return name

    def settings(self) -> dict[str, object]:
        """Server settings for a fresh bucket of this server."""
        return {"s3_bucket": self.new_bucket(), "s3_endpoint": self.endpoint,
                "s3_prefix": "uploads/"}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


class FaultyS3:
    """An HTTP proxy in front of an S3 endpoint that slows, throttles or drops requests.

    Servers pointed at ``endpoint`` reach S3 through it. Rules match a
    request by method and a part of its query (``uploadId`` without
    ``partNumber`` is CompleteMultipartUpload, ``partNumber`` is UploadPart):
    ``slow`` delays every matching request, ``throttle`` answers the next
    ``count`` of them 503 SlowDown (``refuse``: another status and error code);
    ``down`` drops every connection unanswered,
    as an endpoint that went away. Request bodies are read whole: tests send
    parts of a few MiB.
    """

    HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "expect"}

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.port = free_port()
        self.down = False
        self.delays: list[tuple[str, str, float]] = []
        #: [method, query part, answers left, status, error code]
        self.throttled: list[list] = []
        #: Every request forwarded or refused: (method, path, query).
        self.seen: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def slow(self, method: str, query_part: str, seconds: float) -> None:
        self.delays.append((method, query_part, seconds))

    def throttle(self, method: str, query_part: str, count: int) -> None:
        self.refuse(method, query_part, count, 503, "SlowDown")

    def refuse(self, method: str, query_part: str, count: int, status: int, code: str) -> None:
        with self.lock:
            self.throttled.append([method, query_part, count, status, code])

    def clear(self) -> None:
        with self.lock:
            self.delays, self.throttled, self.down, self.seen = [], [], False, []

    @staticmethod
    def _matches(method: str, query: str, rule_method: str, part: str) -> bool:
        wanted = [name for name in part.split("&") if name]
        names = {item.split("=", 1)[0] for item in query.split("&") if item}
        plain = [name for name in wanted if not name.startswith("!")]
        excluded = [name[1:] for name in wanted if name.startswith("!")]
        return (method == rule_method and all(name in names for name in plain)
                and not any(name in names for name in excluded))

    def _decide(self, method: str, path: str, query: str) -> tuple[float, tuple | None]:
        """(seconds to wait, (status, code) to answer instead of forwarding, or None)."""
        with self.lock:
            self.seen.append((method, path, query))
            delay = sum(seconds for rule_method, part, seconds in self.delays
                        if self._matches(method, query, rule_method, part))
            for rule in self.throttled:
                if rule[2] > 0 and self._matches(method, query, rule[0], rule[1]):
                    rule[2] -= 1
                    return delay, (rule[3], rule[4])
        return delay, None

    def start(self) -> FaultyS3:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.down:
                    self.close_connection = True
                    return
                target = urlsplit(self.path)
                delay, refuse = proxy._decide(self.command, target.path, target.query)
                time.sleep(delay)
                if refuse:
                    status, code = refuse
                    answer = (f'<?xml version="1.0"?><Error><Code>{code}</Code>'
                              "<Message>refused by the test</Message></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(answer)
                    return
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=60
                )
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in proxy.HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    reply = upstream.getresponse()
                    content = reply.read()
                finally:
                    upstream.close()
                self.send_response(reply.status)
                reframed = proxy.HOP_BY_HOP | ({"content-length"} if content else set())
                for name, value in reply.getheaders():
                    if name.lower() not in reframed:
                        self.send_header(name, value)
                if content:
                    self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
