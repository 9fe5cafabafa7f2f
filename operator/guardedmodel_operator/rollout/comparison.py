"""Shadow and replay: what a candidate answered next to the stable version, before anyone sees it.

The sidecars compare, row by row, the candidate's answer with the stable version's: on mirrored live
traffic (shadow) and on payloads their audit log sampled (replay). They count rows, top-1 agreements,
and both sides' calibrated confidence and OOD rows; this module turns those counts into the three
figures the analysis checks (agreement, confidence shift, OOD rate shift) and decides. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SOURCES = ("shadow", "replay")


@dataclass(frozen=True)
class ComparisonSpec:
    """spec.rollout.shadow / replay / comparison."""

    shadow_fraction: float = 0.0  # 0 = no mirroring
    replay_samples: int = 0  # 0 = no replay
    min_rows: int = 100
    min_agreement: float | None = 0.9
    max_confidence_shift: float | None = 0.1
    max_ood_rate_shift: float | None = 0.05

    @classmethod
    def from_rollout(cls, rollout: Mapping[str, Any]) -> ComparisonSpec:
        comparison = rollout.get("comparison") or {}

        def number(key: str) -> float | None:
            value = comparison.get(key)
            return None if value is None else float(value)

        return cls(
            shadow_fraction=float((rollout.get("shadow") or {}).get("fraction") or 0.0),
            replay_samples=int((rollout.get("replay") or {}).get("samples") or 0),
            min_rows=max(1, int(comparison.get("minRows", 100))),
            min_agreement=number("minAgreement"),
            max_confidence_shift=number("maxConfidenceShift"),
            max_ood_rate_shift=number("maxOodRateShift"),
        )

    @property
    def enabled(self) -> bool:
        """A shadow or replay phase runs before the first canary step."""
        return self.shadow_fraction > 0 or self.replay_samples > 0

    def status_shadow(self, version: str) -> dict[str, Any]:
        """status.shadow: what every sidecar reads to load, mirror to and replay to the candidate."""
        return {"version": version, "fraction": self.shadow_fraction, "replay": self.replay_samples}


@dataclass(frozen=True)
class ComparisonSamples:
    """The sidecars' comparison counters for one candidate against one stable version, summed over
    pods since the shadow phase started; per source ("shadow", "replay")."""

    version: str
    baseline: str
    rows: Mapping[str, float] = field(default_factory=dict)
    agreements: float = 0.0
    candidate_confidence: float = 0.0
    baseline_confidence: float = 0.0
    candidate_ood: float = 0.0
    baseline_ood: float = 0.0
    error: str | None = None  # why there are no figures (Prometheus unreachable)

    @property
    def total_rows(self) -> float:
        return float(sum(self.rows.values()))

    def _per_row(self, value: float) -> float | None:
        return value / self.total_rows if self.total_rows > 0 else None

    @property
    def agreement(self) -> float | None:
        return self._per_row(self.agreements)

    @property
    def confidence_shift(self) -> float | None:
        """Mean calibrated confidence of the candidate minus the stable's, on the same rows."""
        return self._per_row(self.candidate_confidence - self.baseline_confidence)

    @property
    def ood_rate_shift(self) -> float | None:
        return self._per_row(self.candidate_ood - self.baseline_ood)

    def summary(self) -> str:
        agreement, confidence, ood = self.agreement, self.confidence_shift, self.ood_rate_shift
        if agreement is None or confidence is None or ood is None:
            return f"no rows of version {self.version} compared with {self.baseline} yet"
        sources = ", ".join(
            f"{source} {int(self.rows[source])}" for source in SOURCES if self.rows.get(source)
        )
        return (
            f"agreement {agreement:.3f}, confidence shift {confidence:+.3f}, OOD rate shift {ood:+.3f} "
            f"over {int(self.total_rows)} rows ({sources}) against version {self.baseline}"
        )

    def as_status(self, decision: str) -> dict[str, Any]:
        """status.comparison, rounded so that ordinary noise does not cause a write per check."""
        figures = {
            "version": self.version,
            "baseline": self.baseline,
            "rows": int(self.total_rows),
            "shadowRows": int(self.rows.get("shadow", 0)),
            "replayRows": int(self.rows.get("replay", 0)),
            "agreement": _round(self.agreement),
            "confidenceShift": _round(self.confidence_shift),
            "oodRateShift": _round(self.ood_rate_shift),
            "decision": decision,
        }
        return {k: v for k, v in figures.items() if v is not None}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def comparison_breaches(spec: ComparisonSpec, samples: ComparisonSamples) -> list[str]:
    """The thresholds the comparison breaks, as text; empty when it passes (or has no rows)."""
    broken = []
    agreement, confidence, ood = samples.agreement, samples.confidence_shift, samples.ood_rate_shift
    if spec.min_agreement is not None and agreement is not None and agreement < spec.min_agreement:
        broken.append(f"agreement {agreement:.3f} < minAgreement {spec.min_agreement:g}")
    if (
        spec.max_confidence_shift is not None
        and confidence is not None
        and abs(confidence) > spec.max_confidence_shift
    ):
        broken.append(
            f"confidence shift {confidence:+.3f} beyond maxConfidenceShift {spec.max_confidence_shift:g}"
        )
    if spec.max_ood_rate_shift is not None and ood is not None and abs(ood) > spec.max_ood_rate_shift:
        broken.append(f"OOD rate shift {ood:+.3f} beyond maxOodRateShift {spec.max_ood_rate_shift:g}")
    return broken
