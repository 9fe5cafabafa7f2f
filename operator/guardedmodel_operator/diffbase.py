"""kopf's diff base, built without deep-copying what it then throws away.

kopf builds the "essence" of an object (everything but status and most metadata) on every watch
event of every watched kind, by deep-copying the whole object first: a Deployment's status and
managedFields are most of it, and a busy operator sees thousands of such events. This storage hands
kopf's own builder only the parts it keeps, so the essence is the same and the copy is small.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import kopf

# What kopf's builder reads of metadata: labels and annotations for the essence, the kind and the
# owner references for its storage keys, name and namespace for its messages.
_KEPT_METADATA = ("name", "namespace", "labels", "annotations", "ownerReferences")


class SlimDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        extra = list(extra_fields or ())
        if extra:
            # A handler that follows chosen fields (status ones too) needs the whole object.
            return super().build(body=body, extra_fields=extra)
        metadata = body.get("metadata") or {}
        kept = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        kept["metadata"] = {k: metadata[k] for k in _KEPT_METADATA if k in metadata}
        return super().build(body=kopf.Body(cast(kopf.RawBody, kept)))
