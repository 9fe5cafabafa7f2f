"""The plugin's only I/O with the cluster: kubectl, with the person's own kubeconfig and context.

kubectl carries every way a kubeconfig can authenticate (exec plugins, OIDC, client certificates),
so the plugin needs no Kubernetes client of its own and acts with exactly the person's rights.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

RESOURCE = "guardedmodels.guardedmodel.io"


class KubectlError(Exception):
    """kubectl failed; the message is its own, with the command that failed."""

    def __init__(self, args: Sequence[str], stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)}: {stderr.strip()}")
        self.conflict = "the object has been modified" in stderr or "Conflict" in stderr


@dataclass(frozen=True)
class Kubectl:
    namespace: str | None = None
    context: str | None = None
    kubeconfig: str | None = None
    impersonate: str | None = None  # kubectl --as: act as this user (the cluster checks it may)
    # GUARDEDMODEL_KUBECTL names another binary; run as `kubectl guardedmodel`, kubectl's own is on PATH.
    program: str = field(default_factory=lambda: os.environ.get("GUARDEDMODEL_KUBECTL", "kubectl"))
    timeout_s: float = 30.0

    def _run(self, args: Sequence[str]) -> str:
        flags = [f"--kubeconfig={self.kubeconfig}"] if self.kubeconfig else []
        flags += [f"--context={self.context}"] if self.context else []
        flags += [f"--namespace={self.namespace}"] if self.namespace else []
        flags += [f"--as={self.impersonate}"] if self.impersonate else []
        try:
            done = subprocess.run(
                [self.program, *flags, *args], capture_output=True, text=True, timeout=self.timeout_s
            )
        except FileNotFoundError:
            raise KubectlError(
                args, f"{self.program!r} not found: install kubectl or set GUARDEDMODEL_KUBECTL"
            ) from None
        except subprocess.TimeoutExpired:
            raise KubectlError(args, f"no answer within {self.timeout_s:g}s") from None
        if done.returncode != 0:
            raise KubectlError(args, done.stderr or f"exit code {done.returncode}")
        return done.stdout

    def get(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self._run(["get", RESOURCE, name, "-o", "json"])))

    def merge_patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        out = self._run(["patch", RESOURCE, name, "--type=merge", "-p", json.dumps(patch), "-o", "json"])
        return dict(json.loads(out))

    def json_patch(self, name: str, patch: list[dict[str, Any]]) -> None:
        self._run(["patch", RESOURCE, name, "--type=json", "-p", json.dumps(patch)])

    def events(self, name: str) -> list[dict[str, Any]]:
        """The Events about this GuardedModel (as many as the API server still keeps)."""
        selector = f"involvedObject.kind=GuardedModel,involvedObject.name={name}"
        out = self._run(["get", "events", "--field-selector", selector, "-o", "json"])
        return list(json.loads(out).get("items") or [])
