"""A review webhook on loopback: what a review tool's endpoint receives, kept in memory.

The sidecar POSTs each review item as JSON (at least once: the same ``id`` may come again after a
late answer), so the inbox keeps one item per ``id`` and answers 204 to every delivery.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

#: A review item is an audit record plus a preview of the rows to review: small, but bounded here too.
MAX_ITEM_BYTES = 8 * 1024 * 1024


class ReviewInbox:
    """``url`` is the webhook to put in ``spec.confidence.review.webhook``; ``items()`` what arrived."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._items: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if self.path != "/review" or not 0 < length <= MAX_ITEM_BYTES:
                    self.send_response(404 if self.path != "/review" else 413)
                    self.end_headers()
                    return
                try:
                    item = json.loads(self.rfile.read(length))
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                with inbox._lock:
                    inbox._items[str(item.get("id"))] = item
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # deliveries are counted in items(), not printed over the demo's output

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="review-inbox", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/review"

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items.values())

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
