"""Which model version serves a request, and which are kept ready without serving.

``Router.choose`` splits traffic between stable and canary by weight with a credit counter rather
than a random draw, so 10 % means exactly every tenth request (reproducible in tests and canaries).
``Router.mirror`` picks, the same way, the share of the stable's requests copied to a shadow
candidate. Keeping the versions loaded is model_loader.py; following the GuardedModel's routing
status is status_watch.py.
"""

from __future__ import annotations

from guardedmodel_sidecar.config import Routing

STABLE, CANARY, LAST_GOOD, SHADOW = "stable", "canary", "lastGood", "shadow"
_PPM = 1_000_000  # mirror credit in parts per million: exact, where float sums drift


class Router:
    def __init__(self, routing: Routing) -> None:
        self.routing = routing
        # The stable this sidecar saw before a promotion: the rollback target when the
        # GuardedModel names no lastGoodVersion.
        self.previous_stable: str | None = None
        self._credit = 0
        self._mirror_credit = 0

    def update(self, routing: Routing) -> bool:
        """Adopt new routing; True when it changed."""
        if routing == self.routing:
            return False
        if routing.stable_version != self.routing.stable_version:
            self.previous_stable = self.routing.stable_version
        self.routing = routing
        self._credit = 0
        self._mirror_credit = 0
        return True

    def choose(self) -> str:
        routing = self.routing
        if routing.canary_version and routing.canary_weight:
            self._credit += routing.canary_weight
            if self._credit >= 100:
                self._credit -= 100
                return routing.canary_version
        return routing.stable_version

    def mirror(self) -> str | None:
        """For a request the stable answered: the shadow candidate to copy it to, or None."""
        shadow = self.routing.shadow
        if shadow is None or shadow.fraction <= 0.0:
            return None
        self._mirror_credit += round(shadow.fraction * _PPM)
        if self._mirror_credit < _PPM:
            return None
        self._mirror_credit -= _PPM
        return shadow.version

    @property
    def last_good(self) -> str | None:
        """The rollback target: the GuardedModel's lastGoodVersion, else the stable seen before."""
        fallback = self.previous_stable if self.previous_stable != self.routing.stable_version else None
        return self.routing.last_good or fallback

    def versions_to_load(self) -> tuple[str, ...]:
        """Served versions first, then the last good and the shadow candidate."""
        return tuple(dict.fromkeys([*self.routing.kept_versions(), *filter(None, [self.last_good])]))

    def roles(self) -> list[tuple[str, str]]:
        """(version, role) of every kept version; one version may hold several roles."""
        routing = self.routing
        roles = [(routing.stable_version, STABLE)]
        if routing.canary_version and routing.canary_version != routing.stable_version:
            roles.append((routing.canary_version, CANARY))
        if self.last_good:
            roles.append((self.last_good, LAST_GOOD))
        if routing.shadow is not None:
            roles.append((routing.shadow.version, SHADOW))
        return roles
