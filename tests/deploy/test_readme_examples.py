"""The README's examples for teams, run as a reader would paste them.

The host app of "In your Flask app" under gunicorn with the command the
README gives; the HTTP receiver and the Python hooks of "Lifecycle hooks"
with ``resumable serve``. Each file is taken from the README's code block
that starts with its ``# name.py`` comment.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import requests

from ..support import OFFSET_STREAM, ROOT, TUS, free_port, upload_id, wait_until
from ..support.processes import stop_group

README = ROOT / "README.md"


def readme_file(name: str) -> str:
    """The README's code block that starts with ``# <name> —`` or ``# <name>``."""
    for block in re.findall(r"^```python\n(.*?)^```", README.read_text(), re.M | re.S):
        if block.startswith(f"# {name}"):
            return block
    raise AssertionError(f"README.md has no python block for {name}")


def _start(command: list[str], cwd: Path, log: Path, url: str) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)

    def up_or_gone() -> bool:
        if process.poll() is not None:
            return True
        try:
            requests.get(url, timeout=1)
            return True
        except requests.RequestException:
            return False

    assert wait_until(up_or_gone, 20, 0.1) and process.poll() is None, log.read_text()
    return process


def test_the_host_app_example(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(readme_file("app.py"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gunicorn.log"
    # The README's command, with this interpreter's gunicorn and a free port.
    process = _start(
        [sys.executable, "-m", "gunicorn", "--worker-class",
         "resumable.worker.ResumableThreadWorker", "--threads", "256", "--workers", "2",
         "--bind", f"127.0.0.1:{port}", "app:app"],
        tmp_path, log, base + "/healthz",
    )
    try:
        create = {**TUS, "Upload-Length": "5"}
        anonymous = requests.post(base + "/api/uploads/", headers=create, timeout=10)
        assert (anonymous.status_code, anonymous.text) == (401, "log in first\n")
        alice = requests.Session()
        assert alice.post(base + "/login", data={"user": "alice"}, timeout=10).json() == {
            "user": "alice"}
        created = alice.post(base + "/api/uploads/", headers={
            **create, "Upload-Metadata": "filename aGVsbG8udHh0"}, timeout=10)
        assert created.status_code == 201
        location = created.headers["Location"]
        assert location.startswith(base + "/api/uploads/")
        patched = alice.patch(location, data=b"hello", timeout=10, headers={
            **TUS, "Upload-Offset": "0", "Content-Type": OFFSET_STREAM})
        assert patched.status_code == 204
        uid = upload_id(location)
        assert wait_until(lambda: f"finished {uid} hello.txt" in log.read_text(), 10), \
            log.read_text()
        # The data dir the config names, relative to where the app runs.
        assert (tmp_path / "uploads" / "uploads" / uid).read_bytes() == b"hello"
    finally:
        stop_group(process, 15)


def test_the_receiver_and_python_hooks_examples(tmp_path: Path) -> None:
    (tmp_path / "receiver.py").write_text(readme_file("receiver.py"))
    (tmp_path / "upload_hooks.py").write_text(readme_file("upload_hooks.py"))
    receiver_port, server_port = free_port(), free_port()
    receiver = _start(
        [sys.executable, "-m", "flask", "--app", "receiver:receiver", "run", "--port",
         str(receiver_port)],
        tmp_path, tmp_path / "receiver.log", f"http://127.0.0.1:{receiver_port}/",
    )
    endpoint = f"http://127.0.0.1:{server_port}/files/"
    server = _start(
        [sys.executable, "-m", "resumable", "serve", "--port", str(server_port),
         "--hooks-http", f"http://127.0.0.1:{receiver_port}/hooks",
         "--hooks-enabled-events", "pre-create,post-finish", "--hooks-http-timeout", "5",
         "--hooks", "upload_hooks:hooks"],
        tmp_path, tmp_path / "server.log", endpoint,
    )
    try:
        exe = requests.post(endpoint, timeout=10, headers={
            **TUS, "Upload-Length": "3", "Upload-Metadata": "filename YS5leGU="})  # a.exe
        assert (exe.status_code, exe.text) == (422, "no executables\n")
        big = requests.post(endpoint, headers={**TUS, "Upload-Length": str(3 * 1024**3)},
                            timeout=10)
        assert (big.status_code, big.text) == (413, "2 GiB at most\n")
        created = requests.post(endpoint, data=b"abc", timeout=10, headers={
            **TUS, "Upload-Length": "3", "Content-Type": OFFSET_STREAM})
        assert created.status_code == 201
        uid = upload_id(created.headers["Location"])
        head = requests.head(created.headers["Location"], headers=TUS, timeout=10)
        assert head.headers["Upload-Metadata"] == "checked eWVz"
        assert wait_until(lambda: f"finished {uid} 3" in
                          (tmp_path / "receiver.log").read_text(), 10)
        assert wait_until(lambda: f"finished {uid}" in
                          (tmp_path / "server.log").read_text(), 10)
        time.sleep(0.2)
    finally:
        stop_group(server, 15)
        stop_group(receiver, 15)
