"""In a pod the operator dials the API server where the kubelet says it is (as client-go does),
not kopf's https://kubernetes.default.svc, which needs cluster DNS."""

from __future__ import annotations

import kopf
import pytest

from guardedmodel_operator.kube import at_service_host


def service_account_info() -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(
        server="https://kubernetes.default.svc",
        ca_path="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        scheme="Bearer",
        token="token",
        default_namespace="ops",
    )


@pytest.mark.parametrize(
    ("host", "port", "server"),
    [("10.96.0.1", "443", "https://10.96.0.1:443"), ("fd00::1", "6443", "https://[fd00::1]:6443")],
)
def test_the_service_host_and_port_set_the_server(host: str, port: str, server: str) -> None:
    info = at_service_host(
        service_account_info(), {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    )
    assert info.server == server
    # everything else (credentials, CA, namespace) is the service account's
    assert (info.token, info.ca_path, info.default_namespace) == (
        "token",
        service_account_info().ca_path,
        "ops",
    )


@pytest.mark.parametrize("environ", [{}, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}])
def test_without_both_variables_kopfs_address_stays(environ: dict[str, str]) -> None:
    assert at_service_host(service_account_info(), environ).server == "https://kubernetes.default.svc"
