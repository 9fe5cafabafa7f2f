"""Which model version serves a request.

``Router.choose`` splits traffic between stable and canary by weight with a credit counter rather
than a random draw, so 10 % means exactly every tenth request (reproducible in tests and canaries).
Keeping the routed versions loaded is model_loader.py; following the GuardedModel's routing status
is status_watch.py.
"""

from __future__ import annotations

from guardedmodel_sidecar.config import Routing


class Router:
    def __init__(self, routing: Routing) -> None:
        self.routing = routing
        self.previous_stable: str | None = None
        self._credit = 0

    def update(self, routing: Routing) -> bool:
        """Adopt new routing; True when it changed."""
        if routing == self.routing:
            return False
        if routing.stable_version != self.routing.stable_version:
            self.previous_stable = self.routing.stable_version
        self.routing = routing
        self._credit = 0
        return True

    def choose(self) -> str:
        routing = self.routing
        if routing.canary_version and routing.canary_weight:
            self._credit += routing.canary_weight
            if self._credit >= 100:
                self._credit -= 100
                return routing.canary_version
        return routing.stable_version

    def versions_to_load(self) -> tuple[str, ...]:
        versions = list(self.routing.versions())
        if self.previous_stable and self.previous_stable not in versions:
            versions.append(self.previous_stable)
        return tuple(versions)
