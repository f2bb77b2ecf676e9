"""``close-opps webhooks listen``: one JSON line per verified change."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from close_opps.cli._webhooks import KEY_ENV, listen_until_cancelled

from .test_cli import assert_one_error_line, invoke
from .test_webhooks import EXAMPLES

KEY = "5766b2447c7b51c5a08643792532e310eabfde421c0bb49b9bb2838e1d0cc1ca"
ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"listening for Close webhooks on (http://\S+)")


def _signed(event: dict[str, Any], key: str = KEY) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"subscription_id": "whsub_x", "event": event}).encode()
    stamp = str(int(time.time()))
    digest = hmac.new(bytes.fromhex(key), stamp.encode() + body, hashlib.sha256).hexdigest()
    return body, {"close-sig-timestamp": stamp, "close-sig-hash": digest}


CREATED = EXAMPLES["single_events"]["opportunity_created"]["event"]
DELETED = EXAMPLES["single_events"]["opportunity_deleted"]["event"]


def test_listen_needs_the_key_in_the_environment() -> None:
    result = invoke(["webhooks", "listen", "--port", "0"], env={KEY_ENV: ""})
    assert_one_error_line(result, exit_code=2, contains=KEY_ENV)


def test_listen_refuses_a_key_that_is_not_hex_without_printing_it() -> None:
    result = invoke(["webhooks", "listen", "--port", "0"], env={KEY_ENV: "sekrit-not-hex"})
    line = assert_one_error_line(result, exit_code=2, contains="not a hex signing key")
    assert "sekrit" not in line


class _Lines(io.StringIO):
    """An output stream that wakes a waiter on each write."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def write(self, text: str) -> int:
        self.written.set()
        return super().write(text)


async def test_each_verified_change_is_one_json_line() -> None:
    out = _Lines()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        listen_until_cancelled(
            KEY,
            host="127.0.0.1",
            port=0,
            path="/close",
            tolerance=300,
            out=out,
            on_ready=ready.set_result,
        )
    )
    try:
        url = await asyncio.wait_for(ready, 10)
        async with aiohttp.ClientSession() as http:
            bad_body, bad_headers = _signed(CREATED, key="00" * 32)
            async with http.post(url, data=bad_body, headers=bad_headers) as response:
                assert response.status == 401
            for event in (CREATED, DELETED):
                body, headers = _signed(event)
                async with http.post(url, data=body, headers=headers) as response:
                    assert response.status == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # the app's cleanup applies what was accepted first
    created, deleted = (json.loads(line) for line in out.getvalue().splitlines())
    assert created["kind"] == "upsert"
    assert created["id"] == CREATED["object_id"]
    assert created["occurred_at"] == "2024-06-14T05:10:11.130000+00:00"
    assert created["opportunity"]["amount"] == {"amount": "2500", "currency": "USD"}
    assert deleted == {
        "kind": "delete",
        "provider": "close",
        "id": DELETED["object_id"],
        "occurred_at": "2024-06-14T05:25:00.310000+00:00",
        "opportunity": None,
    }


def test_the_command_runs_until_interrupted() -> None:
    env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "close_opps.cli", "webhooks", "listen", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    errors: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in proc.stderr or ():
            errors.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while not (found := LISTENING.search(errors.get(timeout=20))):
            pass
        body, headers = _signed(CREATED)

        async def post() -> int:
            async with (
                aiohttp.ClientSession() as http,
                http.post(found[1], data=body, headers=headers) as response,
            ):
                return response.status

        assert asyncio.run(post()) == 200
        line = json.loads(proc.stdout.readline())
        assert line["id"] == CREATED["object_id"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        proc.stdout.close()
        proc.stderr.close()
    rest = "".join(errors.queue)
    assert "Traceback" not in rest
    assert "webhook listener stopped" in rest
