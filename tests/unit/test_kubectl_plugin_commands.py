"""kubectl guardedmodel's pure parts: what promote, abort and undo write (and refuse), how the
operator's policy reads what they wrote, and the text of status and history."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from guardedmodel_cli.main import main as guardedmodel_main
from guardedmodel_cli.plugin import actions, view
from guardedmodel_cli.plugin.main import main as plugin_main
from guardedmodel_operator.rollout.commands import ABORT, PROMOTE
from guardedmodel_operator.rollout.outcome import apply_verdict
from guardedmodel_operator.rollout.types import RolloutSpec, RolloutState
from guardedmodel_operator.rollout.verdict import decide

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
READY = [
    {
        "type": "Ready",
        "status": "True",
        "reason": "RolloutComplete",
        "lastTransitionTime": "2026-01-01T11:00:00Z",
    }
]


def model(version: str = "2", canary: str | None = "2", weight: int = 10, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "clf", "namespace": "ml", "generation": 5, "resourceVersion": "77"},
        "spec": {
            "model": {"name": "m", "repository": "file:///r", "version": version},
            "rollout": {"steps": [10, 50, 100], "interval": "30s"},
        },
        "status": {
            "phase": "Progressing" if canary else "Ready",
            "observedGeneration": 5,
            "stableVersion": "1",
            "canaryWeight": weight if canary else 0,
            "conditions": READY,
            "rollout": {"phase": "Progressing" if canary else "Ready", "since": "2026-01-01T11:59:50Z"},
            "history": [
                {"version": "1", "outcome": "Promoted", "at": "2026-01-01T11:00:00Z", "reason": "ready"}
            ],
            **status,
        },
    }
    if canary:
        body["status"]["canaryVersion"] = canary
    return body


def applied(body: dict[str, Any], change: actions.Change) -> dict[str, Any]:
    """The object after the change's merge patch, as the API server stores it."""
    out = copy.deepcopy(body)
    meta = change.patch.get("metadata") or {}
    out["metadata"].setdefault("annotations", {}).update(meta.get("annotations") or {})
    if "spec" in change.patch:
        out["spec"]["model"].update(change.patch["spec"]["model"])
        out["metadata"]["generation"] += 1
    return out


def operator_step(body: dict[str, Any]) -> dict[str, Any]:
    """One decision of the operator's rollout policy on `body`; the body with its new status."""
    spec = RolloutSpec.from_body(body)
    verdict = decide(spec, RolloutState.from_status(body["status"], spec.generation), None, NOW)
    owned = apply_verdict(body["status"], verdict, spec, NOW)
    status = {k: v for k, v in {**body["status"], **owned}.items() if v is not None}
    return {**body, "status": status}


# ---------------------------------------------------------------- promote and abort


@pytest.mark.parametrize(("weight", "then"), [(10, 50), (50, 100), (100, None)])
def test_promote_names_the_canary_its_generation_and_step_and_the_operator_takes_that_step(
    weight: int, then: int | None
) -> None:
    body = model(weight=weight)
    change = actions.promote(body, full=False)
    assert change.patch["metadata"] == {
        "resourceVersion": "77",
        "annotations": {PROMOTE: f"version=2,generation=5,weight={weight}"},
    }
    assert f"from {weight}% to {f'{then}%' if then else 'stable'}" in change.summary
    after = operator_step(applied(body, change))
    assert after["status"].get("canaryWeight") == (then or 0)
    assert after["status"]["stableVersion"] == ("1" if then else "2")
    assert change.order is not None
    done = actions.carried_out(change.order, after)
    assert done is not None and done[0] and change.order.words in done[1]
    # left on the object, the order does nothing more
    again = operator_step(after)
    assert again["status"].get("canaryWeight") == after["status"].get("canaryWeight")


def test_promote_full_and_abort() -> None:
    body = model(weight=50)
    full = actions.promote(body, full=True)
    assert full.patch["metadata"]["annotations"] == {PROMOTE: "version=2,generation=5,full=true"}
    assert operator_step(applied(body, full))["status"]["stableVersion"] == "2"
    abort = actions.abort(body)
    assert abort.patch["metadata"]["annotations"] == {ABORT: "version=2,generation=5"}
    assert "all traffic back to 1" in abort.summary
    after = operator_step(applied(body, abort))
    assert after["status"]["rollout"]["phase"] == "RolledBack" and "canaryVersion" not in after["status"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (model(version="1", canary=None), "version 1 serves alone"),
        (model(version="3", canary=None, shadow={"version": "3", "fraction": 0.5}), "version 3 is in shadow"),
        (model(version="3", canary="2"), "spec.model.version is 3 while canary 2 is in flight"),
    ],
)
@pytest.mark.parametrize("act", ["promote", "promote --full", "abort"])
def test_promote_and_abort_refuse_without_a_canary_to_act_on(
    body: dict[str, Any], why: str, act: str
) -> None:
    with pytest.raises(actions.Refused, match=why):
        if act == "abort":
            actions.abort(body)
        else:
            actions.promote(body, full=act.endswith("--full"))


def test_an_order_overtaken_by_the_canary_moving_on_is_said_to_be() -> None:
    body = model(weight=10)
    change = actions.promote(body, full=False)
    assert change.order is not None
    assert actions.carried_out(change.order, applied(body, change)) is None  # still to come
    moved = model(weight=50)  # the canary's own check took the step first
    moved["status"]["history"].append({"version": "2", "outcome": "X", "at": "t", "reason": "checks"})
    state = actions.carried_out(change.order, moved)
    assert state is not None and state[0] is False and "canary 2 at 50%, generation 5" in state[1]
    edited = model(weight=10)  # the spec was edited meanwhile: a new generation
    edited["metadata"]["generation"] = 6
    state = actions.carried_out(change.order, edited)
    assert state is not None and state[0] is False and "will never act" in state[1]


def test_the_cleanup_removes_only_the_order_written() -> None:
    order = actions.promote(model(), full=False).order
    assert order is not None
    path = "/metadata/annotations/guardedmodel.io~1promote"
    assert actions.cleanup_patch(order) == [
        {"op": "test", "path": path, "value": order.value},
        {"op": "remove", "path": path},
    ]


# ---------------------------------------------------------------- undo


@pytest.mark.parametrize(
    ("body", "to", "target", "effect"),
    [
        (model(version="2"), None, "1", "canary 2 is withdrawn"),
        (
            model(version="2", canary=None, rollout={"phase": "RolledBack"}),
            None,
            "1",
            "the rollback to 1 is acknowledged",
        ),
        (model(version="1", canary=None, lastGoodVersion="4"), None, "4", "rolls version 4 out"),
        (model(version="1", canary=None), "7", "7", "rolls version 7 out"),
    ],
)
def test_undo_sets_the_spec_back(body: dict[str, Any], to: str | None, target: str, effect: str) -> None:
    change = actions.undo(body, to)
    assert change.patch == {"metadata": {"resourceVersion": "77"}, "spec": {"model": {"version": target}}}
    assert effect in change.summary and change.order is None


@pytest.mark.parametrize(
    ("body", "to", "why"),
    [
        (model(version="1", canary=None), None, "--to-version"),
        (model(version="1", canary=None), "1", "already"),
        (model(version="1", canary=None), "01", "positive whole number"),
        (model(version="1", canary=None), "latest", "positive whole number"),
    ],
)
def test_undo_refuses_what_would_change_nothing_or_is_no_version(
    body: dict[str, Any], to: str | None, why: str
) -> None:
    with pytest.raises(actions.Refused, match=why):
        actions.undo(body, to)


def test_undo_of_a_rollback_is_what_the_operator_acknowledges() -> None:
    rolled_back = model(version="2", canary=None, rollout={"phase": "RolledBack"})
    after = operator_step(applied(rolled_back, actions.undo(rolled_back, None)))
    assert after["status"]["rollout"]["phase"] == "Ready"


# ---------------------------------------------------------------- status and history


def test_status_shows_versions_step_figures_judged_and_orders() -> None:
    body = model(weight=50, metrics={"version": "2", "oodRate": 0.04, "requestsPerSecond": 12.0})
    body["spec"]["rollout"]["thresholds"] = {"maxOodRate": 0.1}
    body["metadata"]["annotations"] = {PROMOTE: "version=2,generation=5,weight=10", ABORT: "nonsense"}
    s = view.summary(body)
    assert s["serving"] == [
        {"version": "1", "role": "stable", "weight": 50},
        {"version": "2", "role": "canary", "weight": 50},
    ]
    assert (s["step"], s["steps"]) == (2, [10, 50, 100])
    assert s["judged"] == [{"figure": "oodRate", "value": 0.04, "threshold": "maxOodRate", "limit": 0.1}]
    assert [o["state"][:5] for o in s["orders"]] == ["stale", "unrea"]
    text = view.render_status(body, width=100)
    assert "Serving:          stable 1 (50%), canary 2 (50%)" in text
    assert "Canary step:      step 2 of 3 (50%), next 100%" in text
    assert "oodRate 0.04 (maxOodRate 0.1), requestsPerSecond 12.0" in text
    assert (
        "Order:            guardedmodel.io/promote: version=2,generation=5,weight=10 (stale: never acts)"
        in text
    )
    assert max(len(line) for line in text.splitlines()) <= 100


def test_status_of_a_rolled_back_model_says_what_is_blocked_and_why() -> None:
    body = model(version="2", canary=None)
    body["status"]["rollout"] = {
        "phase": "RolledBack",
        "reason": "Aborted",
        "since": "2026-01-01T11:59:00Z",
        "blockedVersion": "2",
        "blockedReason": "Aborted",
    }
    lines = view.render_status(body, width=120).splitlines()
    assert "Serving:          stable 1 (100%)" in lines
    rollout = next(i for i, line in enumerate(lines) if line.startswith("Rollout:"))
    assert "version 2 blocked (Aborted) until the spec changes" in lines[rollout]
    assert lines[rollout + 1].startswith("Replicas:")  # no message: no empty line


def test_status_of_a_model_with_nothing_yet() -> None:
    body = {"metadata": {"name": "new", "namespace": "ml"}, "spec": {"model": {"version": "1"}}}
    text = view.render_status(body)
    assert "Phase:            (not reconciled yet)" in text and "Serving:          nothing yet" in text
    assert view.render_history(body) == "no history yet"


def test_events_shown_are_the_newest_that_say_what_happened() -> None:
    events = [
        {
            "reason": f"R{i}",
            "type": "Normal",
            "message": f"m{i}",
            "lastTimestamp": f"2026-01-01T00:00:{i:02d}Z",
        }
        for i in range(12)
    ] + [{"reason": "Updated", "message": "updated ConfigMap", "lastTimestamp": "2026-01-01T00:01:00Z"}]
    shown = view.summary(model(), events)["events"]
    assert [e["reason"] for e in shown] == [f"R{i}" for i in range(4, 12)]
    # within one second, in the order the API server stored them
    same_second = [
        {"reason": r, "lastTimestamp": "2026-01-01T00:00:00Z", "metadata": {"resourceVersion": v}}
        for r, v in (("Third", "120"), ("First", "99"), ("Second", "100"))
    ]
    assert [e["reason"] for e in view.summary(model(), same_second)["events"]] == ["First", "Second", "Third"]


def test_history_is_a_table_whose_reasons_wrap_under_their_column() -> None:
    body = model()
    body["status"]["history"].append(
        {"version": "2", "outcome": "CanaryStarted", "at": "2026-01-01T11:59:50Z", "reason": "word " * 40}
    )
    lines = view.render_history(body, width=80).splitlines()
    assert lines[0].split() == ["AT", "VERSION", "OUTCOME", "REASON"]
    column = lines[0].index("REASON")
    assert lines[1][column:] == "ready" and lines[2][column:].startswith("word word")
    assert all(line[:column].strip() == "" for line in lines[3:]) and len(lines) > 3
    assert all(len(line) <= 80 for line in lines)


# ---------------------------------------------------------------- the command line


def test_the_plugin_is_also_guardedmodel_rollout(capsys: pytest.CaptureFixture[str]) -> None:
    for run in (
        lambda: plugin_main(["promote", "--help"]),
        lambda: guardedmodel_main(["rollout", "promote", "--help"]),
    ):
        with pytest.raises(SystemExit) as exit_:
            run()
        assert exit_.value.code == 0 and "--full" in capsys.readouterr().out


def test_without_kubectl_the_error_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GUARDEDMODEL_KUBECTL", str(tmp_path / "no-kubectl"))
    assert plugin_main(["-n", "ml", "status", "clf"]) == 1
    err = capsys.readouterr().err
    assert "not found: install kubectl or set GUARDEDMODEL_KUBECTL" in err and "Traceback" not in err


@pytest.mark.parametrize(("steps", "summary"), [(None, "from 10% to 50%"), ([100, 20], "from 10% to 20%")])
def test_promote_says_the_next_step_of_the_spec_or_of_the_defaults(
    steps: list[int] | None, summary: str
) -> None:
    body = model(weight=10)
    if steps is None:
        del body["spec"]["rollout"]["steps"]
    else:
        body["spec"]["rollout"]["steps"] = steps
    assert summary in actions.promote(body, full=False).summary
