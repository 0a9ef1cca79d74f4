"""A small LSP client for the tests: `dslc lsp` in a subprocess, JSON-RPC over its stdin and stdout.

Messages are framed as the protocol says (`Content-Length: N\\r\\n\\r\\n` + JSON); a reader thread
collects responses by id and keeps every notification (diagnostics, log messages) in order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


class ServerError(Exception):
    pass


class LspClient:
    def __init__(
        self,
        root: Path,
        initialization_options: dict | None = None,
        capabilities: dict | None = None,
        command: list[str] | None = None,
    ):
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.process = subprocess.Popen(
            command or [sys.executable, "-m", "dslc.cli", "lsp"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=root,
        )
        self.next_id = 0
        self.responses: dict[int, dict] = {}
        self.notifications: list[dict] = []
        self.lock = threading.Condition()
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        caps = capabilities or {
            "textDocument": {"completion": {"completionItem": {"snippetSupport": True}}},
            "general": {"positionEncodings": ["utf-16"]},
        }
        self.initialized = self.request(
            "initialize",
            {
                "processId": None,
                "rootUri": root.as_uri(),
                "capabilities": caps,
                "initializationOptions": initialization_options or {},
            },  # fmt: skip
        )
        self.notify("initialized", {})

    # ------------------------------------------------------------ transport

    def _read(self) -> None:
        stream = self.process.stdout
        try:
            while True:
                length = None
                while True:
                    line = stream.readline()
                    if not line:
                        return
                    line = line.strip()
                    if not line:
                        break
                    key, _, value = line.decode("ascii").partition(":")
                    if key.lower() == "content-length":
                        length = int(value)
                message = json.loads(stream.read(length))
                with self.lock:
                    if "id" in message and "method" not in message:
                        self.responses[message["id"]] = message
                    elif "method" in message and "id" in message:  # a request from the server
                        self._send({"jsonrpc": "2.0", "id": message["id"], "result": None})
                    else:
                        self.notifications.append(message)
                    self.lock.notify_all()
        finally:
            with self.lock:
                self.closed = True
                self.lock.notify_all()

    def _send(self, message: dict) -> None:
        body = json.dumps(message).encode("utf-8")
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def notify(self, method: str, params: Any) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def send_request(self, method: str, params: Any) -> int:
        self.next_id += 1
        self._send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        return self.next_id

    def response(self, request_id: int, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        with self.lock:
            while request_id not in self.responses:
                if self.closed:
                    raise ServerError(f"the server exited: {self.stderr_text()[-3000:]}")
                if not self.lock.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise ServerError(f"no response to request {request_id} in {timeout} s")
            return self.responses.pop(request_id)

    def request(self, method: str, params: Any, timeout: float = 30) -> Any:
        message = self.response(self.send_request(method, params), timeout)
        if "error" in message:
            raise ServerError(f"{method}: {message['error']}")
        return message.get("result")

    # ------------------------------------------------------------ documents

    def open(self, uri: str, text: str, version: int = 1) -> None:
        self.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": uri, "languageId": "dslc", "version": version, "text": text}},
        )

    def change(self, uri: str, text: str, version: int) -> None:
        self.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text}]},
        )

    def diagnostics(self, uri: str, version: int | None = None, timeout: float = 30, after: int = 0) -> list[dict]:
        """The first diagnostics published for `uri` (of `version`, when given) after notification index `after`."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for note in self.notifications[after:]:
                    params = note.get("params") or {}
                    published = note["method"] == "textDocument/publishDiagnostics" and params.get("uri") == uri
                    if published and (version is None or params.get("version") == version):
                        return params["diagnostics"]
                if self.closed:
                    raise ServerError(f"the server exited: {self.stderr_text()[-3000:]}")
                if not self.lock.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise ServerError(f"no diagnostics for {uri} (version {version}) in {timeout} s")

    def errors_logged(self) -> list[str]:
        with self.lock:
            return [
                n["params"]["message"]
                for n in self.notifications
                if n["method"] == "window/logMessage" and n["params"].get("type") == 1
            ]

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", errors="replace")

    def close(self) -> int:
        try:
            if self.process.poll() is None:
                self.request("shutdown", None, timeout=10)
                self.notify("exit", None)
            return self.process.wait(timeout=10)
        except (ServerError, OSError, subprocess.TimeoutExpired):
            self.process.kill()
            return self.process.wait()
        finally:
            self.stderr.close()
