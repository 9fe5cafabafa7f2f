"""Tiny OCI image archives made from Debian's static busybox, for the real node.

The node needs a sandbox ("pause") image before it can run any pod, and its
tests need a small image with a shell and an HTTP server; neither registry.k8s.io
nor Docker Hub is reachable here, so both are written directly as OCI image
layouts (one layer: busybox and its applet links) that `ctr images import` reads.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "httpd", "cat", "echo", "ls", "wget", "ssl_client", "nc", "hostname", "env", "true")


@dataclass(frozen=True)
class ImageSpec:
    """What goes into the image: a name, the files beside busybox, and how it starts."""

    name: str  # fully qualified, e.g. guardedmodel.local/busybox:test
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    files: Mapping[str, bytes] = field(default_factory=dict)  # path inside the image -> content
    workdir: str = "/"


def _layer(files: Mapping[str, bytes]) -> bytes:
    """One uncompressed tar layer: busybox, its applet links, and the given files."""
    if not BUSYBOX.exists():
        raise FileNotFoundError(
            f"{BUSYBOX} is missing: install busybox-static (scripts/install-node-deps.sh)"
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add_dir(path: str) -> None:
            info = tarfile.TarInfo(path)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)

        def add_file(path: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for directory in ("bin", "tmp", "etc", "proc", "sys", "dev"):
            add_dir(directory)
        add_file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        made = {"bin", "tmp", "etc", "proc", "sys", "dev"}
        for path, data in sorted(files.items()):
            relative = path.lstrip("/")
            parents = Path(relative).parents
            for parent in reversed([str(p) for p in parents if str(p) != "."]):
                if parent not in made:
                    add_dir(parent)
                    made.add(parent)
            add_file(relative, data)
    return buffer.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_image_archive(spec: ImageSpec, archive: Path) -> Path:
    """Write `spec` as an OCI image layout tar at `archive`, named for containerd's importer."""
    layer = _layer(spec.files)
    compressed = gzip.compress(layer, mtime=0)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": list(spec.entrypoint) or None,
            "Cmd": list(spec.cmd) or None,
            "Env": ["PATH=/bin"],
            "WorkingDir": spec.workdir,
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    }
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w") as tar:
        config_blob = _blob(tar, json.dumps(config, sort_keys=True).encode())
        layer_blob = _blob(tar, compressed)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_blob}],
        }
        manifest_blob = _blob(tar, json.dumps(manifest, sort_keys=True).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **manifest_blob,
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": spec.name,
                        "org.opencontainers.image.ref.name": spec.name.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
        for name, data in (
            ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
            ("index.json", json.dumps(index).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


#: The pod sandbox image: it only has to hold the pod's namespaces open. containerd
#: stops a sandbox with SIGKILL, so a plain sleep as PID 1 is enough.
PAUSE_IMAGE = ImageSpec(
    name="guardedmodel.local/pause:busybox",
    entrypoint=("/bin/busybox", "sleep", "2147483647"),
)
