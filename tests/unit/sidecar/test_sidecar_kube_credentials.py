"""How the sidecar finds the API server and its credentials: in a pod (service-account token, read
again for every request as the kubelet rotates it) or from a kubeconfig."""

from __future__ import annotations

import base64
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml

from guardedmodel_sidecar.kube_credentials import (
    ApiServer,
    CredentialsError,
    from_kubeconfig,
    in_cluster,
    kubeconfig_path,
)


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ca")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
         "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder / "ca.crt"


def service_account(tmp_path: Path, ca_pem: Path, token: str = "first") -> Path:
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "token").write_text(token + "\n")
    (folder / "ca.crt").write_bytes(ca_pem.read_bytes())
    return folder


def test_in_a_pod_the_service_ip_and_a_token_read_for_every_request(tmp_path: Path, ca_pem: Path) -> None:
    account = service_account(tmp_path, ca_pem)
    api = in_cluster({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, account)
    assert api is not None and api.host == "https://10.96.0.1:443"
    assert isinstance(api.ssl_context, ssl.SSLContext) and api.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert api.headers() == {"Authorization": "Bearer first"}
    (account / "token").write_text("rotated")  # the kubelet's rotation
    assert api.headers() == {"Authorization": "Bearer rotated"}


def test_an_ipv6_service_address_is_bracketed(tmp_path: Path, ca_pem: Path) -> None:
    account = service_account(tmp_path, ca_pem)
    api = in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, account)
    assert api is not None and api.host == "https://[fd00::1]:443"


def test_outside_a_pod_there_is_no_in_cluster_access(tmp_path: Path, ca_pem: Path) -> None:
    assert in_cluster({}, service_account(tmp_path, ca_pem)) is None
    assert (
        in_cluster({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path)
        is None
    )


def write(path: Path, cluster: dict, user: dict) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx",
            }
        )
    )
    return path


def test_a_kubeconfig_with_a_token_and_a_relative_ca_file(tmp_path: Path, ca_pem: Path) -> None:
    (tmp_path / "ca.crt").write_bytes(ca_pem.read_bytes())
    api = from_kubeconfig(
        write(
            tmp_path / "config",
            {"server": "https://127.0.0.1:6443/", "certificate-authority": "ca.crt"},
            {"token": "abc"},
        )
    )
    assert api.host == "https://127.0.0.1:6443"
    assert api.headers() == {"Authorization": "Bearer abc"}
    assert isinstance(api.ssl_context, ssl.SSLContext) and api.ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_a_kubeconfig_with_inline_ca_and_a_token_file(tmp_path: Path, ca_pem: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    cluster = {
        "server": "https://k:6443",
        "certificate-authority-data": base64.b64encode(ca_pem.read_bytes()).decode(),
    }
    api = from_kubeconfig(write(tmp_path / "config", cluster, {"tokenFile": "token"}))
    assert api.headers() == {"Authorization": "Bearer from-file"}


def test_plain_http_and_insecure_tls(tmp_path: Path) -> None:
    api = from_kubeconfig(write(tmp_path / "a", {"server": "http://127.0.0.1:8080"}, {}))
    assert api.ssl_context is False and api.headers() == {}
    api = from_kubeconfig(
        write(tmp_path / "b", {"server": "https://k", "insecure-skip-tls-verify": True}, {"token": "t"})
    )
    assert isinstance(api.ssl_context, ssl.SSLContext) and api.ssl_context.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize("plugin", ["exec", "auth-provider"])
def test_credential_plugins_are_refused_with_what_to_use_instead(tmp_path: Path, plugin: str) -> None:
    with pytest.raises(CredentialsError, match=f"{plugin} plugin.*token"):
        from_kubeconfig(write(tmp_path / "config", {"server": "https://k"}, {plugin: {"command": "x"}}))


def test_broken_kubeconfigs_say_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="no kubeconfig at"):
        from_kubeconfig(tmp_path / "absent")
    with pytest.raises(CredentialsError, match="has no server"):
        from_kubeconfig(write(tmp_path / "config", {}, {"token": "t"}))
    (tmp_path / "nocontext").write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(CredentialsError, match="current-context"):
        from_kubeconfig(tmp_path / "nocontext")


def test_which_kubeconfig(tmp_path: Path) -> None:
    assert kubeconfig_path("/x/given", {"KUBECONFIG": "/a:/b"}) == Path("/x/given")
    assert kubeconfig_path(None, {"KUBECONFIG": "/a:/b"}) == Path("/a")
    assert kubeconfig_path(None, {}) == Path.home() / ".kube" / "config"


def test_from_environment_prefers_an_explicit_kubeconfig(tmp_path: Path) -> None:
    api = ApiServer.from_environment(
        str(write(tmp_path / "config", {"server": "http://127.0.0.1:1"}, {"token": "t"}))
    )
    assert api.host == "http://127.0.0.1:1"
