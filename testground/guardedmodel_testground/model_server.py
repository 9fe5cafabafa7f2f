"""An http:// model repository on the host, for the `fetch-model` init container of real pods.

A GuardedModel whose `spec.model.repository` is `http(s)://...` gets an init container that
downloads `<repository>/<model>.tar.gz` (checked against `<model>.tar.gz.sha256` when present)
into the pod. This module packs a model folder that way and serves the folder of archives
from the host, bound to an address the real node's pods reach (the CNI bridge's gateway).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import tarfile
import threading
from collections.abc import Collection, Iterator
from pathlib import Path

#: Files a model folder may hold that no pod needs (Python's bytecode caches of the host's
#: interpreter, which may not even be the pod's).
SKIPPED_NAMES = frozenset({"__pycache__"})


def pack_model(model_dir: Path, public: Path, versions: Collection[str] | None = None) -> Path:
    """`tar czf <public>/<model>.tar.gz -C <repository> <model>` and its `.sha256` beside it; with
    `versions`, only those version folders (a repository before a version is published). Packing
    again publishes anew: the archive is replaced whole."""
    public.mkdir(parents=True, exist_ok=True)
    archive = public / f"{model_dir.name}.tar.gz"

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if SKIPPED_NAMES & set(parts):
            return None
        if versions is not None and len(parts) > 1 and parts[1].isdigit() and parts[1] not in versions:
            return None
        # Owned by nobody in particular: the pod's user extracts it.
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    partial = archive.with_name(f".{archive.name}.partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(model_dir, arcname=model_dir.name, filter=keep)
    partial.replace(archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (public / f"{archive.name}.sha256").write_text(f"{digest}  {archive.name}\n")
    return archive


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; requests are counted, not logged to stderr (pytest would show them)."""

    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        self.requests.append(self.path)


@contextlib.contextmanager
def serve_folder(public: Path, host: str, port: int = 0) -> Iterator[tuple[str, list[str]]]:
    """Serve `public` over HTTP on `host`; yields the base URL and the paths requested so far."""
    requests: list[str] = []
    handler_class = type("ModelFolderHandler", (_QuietHandler,), {"requests": requests})
    handler = functools.partial(handler_class, directory=str(public))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, name=f"model-server-{host}", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
