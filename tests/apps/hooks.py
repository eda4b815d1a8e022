"""Python lifecycle hooks as a team writes them (``--hooks tests.apps.hooks:receivers``).

Each event is appended as a JSON line to the file ``HOOK_LOG`` names, so a
test can read what the server's workers received. Uploads whose filename
ends in ``.exe`` are refused; ``rename`` metadata replaces the filename; a
``keep`` metadata key vetoes deletion; ``stop: yes`` stops the upload at its
first progress report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from resumable.events import HookAnswer, HookEvent


def _log(event: HookEvent) -> None:
    line = json.dumps({"type": event.type, "id": event.id, "at": time.monotonic(),
                       "upload": dataclasses.asdict(event.upload)})
    with open(os.environ["HOOK_LOG"], "a") as log:
        log.write(line + "\n")


class Receivers:
    def pre_create(self, event: HookEvent) -> HookAnswer | None:
        _log(event)
        filename = event.upload.metadata.get("filename", "")
        if filename.endswith(".exe"):
            return HookAnswer(reject_upload=True, status=422, body="no executables, please")
        if "rename" in event.upload.metadata:
            return HookAnswer(metadata={"filename": event.upload.metadata["rename"]})
        return None

    def post_create(self, event: HookEvent) -> None:
        _log(event)

    def post_receive(self, event: HookEvent) -> HookAnswer | None:
        _log(event)
        if event.upload.metadata.get("stop") == "yes":
            return HookAnswer(stop_upload=True, status=409, body="stopped by the app")
        return None

    def post_finish(self, event: HookEvent) -> None:
        _log(event)

    def pre_terminate(self, event: HookEvent) -> HookAnswer | None:
        _log(event)
        if "keep" in event.upload.metadata:
            return HookAnswer(reject_termination=True)
        return None

    def post_terminate(self, event: HookEvent) -> None:
        _log(event)


receivers = Receivers()
