"""What the demo prints for people. The acts (demo.py) decide what happens; this module only shows it,
so the story's wording and layout can change without touching its steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from guardedmodel_cli.demo_traffic import BatchOutcome, Outcome


def say(text: str) -> None:
    """The heading of one step of the story."""
    print(f"\n==> {text}", flush=True)


def print_table(outcomes: dict[str, Outcome]) -> None:
    header = (
        f"{'input':30} {'accept':>7} {'review':>7} {'OOD-reject':>10} {'gate-refused':>12} "
        f"{'conf':>6} {'ood':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, outcome in outcomes.items():
        conf = f"{np.mean(outcome.confidences):.2f}" if outcome.confidences else "-"
        ood = f"{np.median(outcome.ood_scores):.1f}" if outcome.ood_scores else "-"
        d = outcome.decisions
        print(
            f"{name:30} {d['accept']:>7} {d['review']:>7} {d['rejected as OOD']:>10} "
            f"{d['refused by gate']:>12} {conf:>6} {ood:>7}"
        )
    refusals = [r for o in outcomes.values() for r in o.refusals[:1]]
    if refusals:
        print("\nwhat a refused caller reads (v2 error body, one example per input category):")
        for reason in dict.fromkeys(refusals):
            print(f"  - {reason}")
    print("conf = mean calibrated confidence of answered requests; ood = median OOD score")


def print_decision_counts(query: str, counts: dict[str, str]) -> None:
    print(f"  {query}")
    for decision, value in sorted(counts.items()):
        print(f"    {decision:8} {value}")


def print_phase(status: dict[str, Any]) -> None:
    print(f"  phase {status.get('phase')}, stable v{status.get('stableVersion')}")


def print_comparison(comparison: dict[str, Any]) -> None:
    """status.comparison: what shadow and replay measured before any user saw the candidate."""
    if not comparison.get("rows"):
        print(f"  shadow of v{comparison.get('version')}: no rows compared")
        return
    print(
        f"  shadow and replay of v{comparison['version']} against v{comparison.get('baseline')}: "
        f"{comparison['rows']} rows ({comparison.get('shadowRows', 0)} mirrored, "
        f"{comparison.get('replayRows', 0)} replayed from the audit log): "
        f"top-1 agreement {comparison.get('agreement', float('nan')):.3f}, "
        f"confidence shift {comparison.get('confidenceShift', float('nan')):+.3f}, "
        f"OOD rate shift {comparison.get('oodRateShift', float('nan')):+.3f} → {comparison.get('decision')}"
    )


def print_pods(before: dict[str, int], after: dict[str, int]) -> None:
    """The model's pods (uid → restarts) before and after the rollout."""
    same = before.keys() == after.keys()
    restarts = sum(after.values())
    verdict = "the same pods" if same else "the pods were replaced"
    print(f"  pods: {len(after)} before and after, {verdict}, {restarts} container restarts")


def print_history(status: dict[str, Any]) -> None:
    for entry in status.get("history", [])[-5:]:
        print(f"  history: v{entry.get('version')} {entry.get('outcome')} — {entry.get('reason', '')}")


DRIFT_ALPHA = 0.001  # spec.drift.alpha of the demo's manifest (examples/fashion-mnist.yaml)


def print_events(events: str) -> None:
    for line in events.splitlines()[-6:]:
        print(f"  event: {line}")


def print_drift(
    status: dict[str, Any], drift_score: float | None, drift_p_value: float | None, fired: set[str]
) -> None:
    if drift_p_value is not None:
        verdict = "drifted" if drift_p_value <= DRIFT_ALPHA else "not distinguishable from noise"
        print(
            f"  drift test (p-value of the window, alpha {DRIFT_ALPHA:g}): p = {drift_p_value:.2g}, {verdict}"
        )
    if drift_score is not None:
        print(f"  drift score (PSI against the fit's reference, how far; > 0.2 is large): {drift_score:.2f}")
    print_phase(status)
    for condition in status.get("conditions", []):
        print(f"  condition {condition['type']}={condition['status']}: {condition.get('message', '')}")
    print(f"  alerts firing in Alertmanager: {', '.join(sorted(fired)) or 'none'}")


def print_endpoints(
    *, cluster_state_dir: Path, sidecar: str, metrics: str | None, prometheus_url: str, state_dir: Path
) -> None:
    """Where to look once the demo is done (or while it is kept running). `metrics`: None when the
    sidecar runs in a pod (Prometheus finds it)."""
    print(f'kubectl:     eval "$(guardedmodel cluster env --state-dir {cluster_state_dir})"')
    print(f"sidecar:     http://{sidecar}/v2/models/fashion-mnist")
    if metrics:
        print(f"metrics:     http://{metrics}/metrics")
    print(f"Prometheus:  {prometheus_url}/graph")
    print(f"audit log:   {state_dir / 'audit'}")
    print(f"logs:        {state_dir / 'logs'}")


def print_mixed_batch(outcome: BatchOutcome, odd_positions: list[int], alpha: float | None) -> None:
    marks = {"accept": ".", "review": "?", "reject": "X"}
    print("  GUARD_DECISION per row (. accept, ? review, X reject; ^ marks the digits):")
    print("    " + "".join(marks.get(d, "!") for d in outcome.decisions))
    print(
        "    " + "".join("^" if i in odd_positions else " " for i in range(len(outcome.decisions))).rstrip()
    )
    caught = sum(outcome.decisions[i] == "reject" for i in odd_positions)
    false = sum(d == "reject" for i, d in enumerate(outcome.decisions) if i not in odd_positions)
    print(
        f"  digit rows rejected: {caught} of {len(odd_positions)}; in-distribution rows "
        f"rejected: {false} of {len(outcome.decisions) - len(odd_positions)}"
        + (f" (alpha {alpha:g} lets that share of in-distribution rows go)" if alpha is not None else "")
    )
    print(f"  rows whose LOGITS came back NaN (refused rows, never mistaken for answers): {outcome.blanked}")
    refused = [p for p, d in zip(outcome.p_values, outcome.decisions, strict=False) if d == "reject"]
    if refused:
        print(f"  their conformal p-values (GUARD_OOD_P_VALUE): {', '.join(f'{p:.4f}' for p in refused)}")


def print_rejection_rate(outcome: BatchOutcome, alpha: float | None) -> None:
    rows = len(outcome.decisions)
    rejected = outcome.decisions.count("reject")
    stated = f"at most {alpha:g} by construction" if alpha is not None else "the fit's target"
    print(
        f"  in-distribution rows rejected as OOD: {rejected}/{rows} = {rejected / max(rows, 1):.1%} "
        f"(alpha: {stated}; {outcome.refused_requests} requests refused whole)"
    )
