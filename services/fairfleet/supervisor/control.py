"""The control socket of a running `fairfleet up`: one JSON request line, one JSON answer line.

Requests: ``{"cmd": "restart", "service": NAME, "timeout": S}`` and ``{"cmd": "stop",
"timeout": S}``. Answers: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. A Unix
socket (mode 600 through the folder's owner) rather than a TCP port: only the fleet's user may
stop or restart its services.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fairfleet.supervisor.state import NotRunning

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServer:
    """Serves ``handler`` on a Unix socket in a daemon thread."""

    def __init__(self, path: Path, handler: Handler) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by an up that was killed (the caller checked none runs)
        self.path = path

        class Request(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    request = json.loads(self.rfile.readline() or b"{}")
                    answer = handler(request if isinstance(request, dict) else {})
                except Exception as exc:  # a bad request must not stop the supervisor
                    answer = {"ok": False, "error": str(exc)}
                with contextlib.suppress(OSError):
                    self.wfile.write(json.dumps(answer, default=str).encode() + b"\n")

        self._server = socketserver.ThreadingUnixStreamServer(str(path), Request)
        self._server.daemon_threads = True
        path.chmod(0o600)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="up-control", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def request(path: Path, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Send one request to the up listening on ``path``; NotRunning if nobody answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(path))
            sock.sendall(json.dumps(payload).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NotRunning(f"No `fairfleet up` answers on {path}: {exc}") from exc
    except TimeoutError as exc:
        raise NotRunning(
            f"The `fairfleet up` on {path} did not answer within {timeout_s:g} s."
        ) from exc
    answer = json.loads(data or b"{}")
    return answer if isinstance(answer, dict) else {"ok": False, "error": "malformed answer"}
