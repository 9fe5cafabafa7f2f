"""The test ground's pod discovery for Prometheus (what kubernetes_sd_configs does in a cluster):
which pods become targets, at which address and path, with which labels."""

from __future__ import annotations

from typing import Any

from guardedmodel_testground.pod_discovery import pod_targets


def pod(
    name: str, *, phase: str = "Running", ip: str | None = "10.250.0.7", **annotations: str
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "guarded",
            "labels": {"guardedmodel.io/name": "fashion", "app.kubernetes.io/version": "2"},
            "annotations": annotations,
        },
        "status": {"phase": phase, "podIP": ip},
    }


SCRAPE = {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"}


def test_an_annotated_running_pod_is_a_target_with_its_labels() -> None:
    (group,) = pod_targets([pod("fashion-abc", **SCRAPE)])
    assert group["targets"] == ["10.250.0.7:9090"]
    assert group["labels"] == {
        "guardedmodel_io_name": "fashion",
        "app_kubernetes_io_version": "2",
        "namespace": "guarded",
        "pod": "fashion-abc",
        "__metrics_path__": "/metrics",
    }


def test_the_path_annotation_is_followed() -> None:
    (group,) = pod_targets([pod("p", **SCRAPE, **{"prometheus.io/path": "/stats"})])
    assert group["labels"]["__metrics_path__"] == "/stats"


def test_pods_that_cannot_or_do_not_want_to_be_scraped_are_left_out() -> None:
    terminating = pod("going", **SCRAPE)
    terminating["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    left_out = [
        pod("pending", phase="Pending", **SCRAPE),
        pod("no-ip", ip=None, **SCRAPE),
        pod("not-annotated"),
        pod("no-port", **{"prometheus.io/scrape": "true"}),
        pod("opted-out", **{**SCRAPE, "prometheus.io/scrape": "false"}),
        terminating,
    ]
    assert pod_targets(left_out) == []
    assert [g["labels"]["pod"] for g in pod_targets([*left_out, pod("b", **SCRAPE), pod("a", **SCRAPE)])] == [
        "a",
        "b",
    ]
