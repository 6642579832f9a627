"""Authentication, ACLs and TLS against a private Mosquitto; secrets never reach the logs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures.services import fixture_bytes, wait_for

# Build-independent (storage, client, broker): the pure and 32-bit ARM legs of
# ./run.sh test skip them with -m 'not slow'.
pytestmark = pytest.mark.slow

PASSWORD = "s3cret-pass-for-tests"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(cert))
    return key, cert


@pytest.fixture
def tls_material(tmp_path: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    ca_key, ca_cert = make_ca(tmp_path, "test-ca")
    _other_key, other_cert = make_ca(tmp_path, "other-ca")
    server_key, csr, server_cert = tmp_path / "server.key", tmp_path / "server.csr", tmp_path / "server.pem"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(server_key),
            "-out", str(csr))
    extensions = tmp_path / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-extfile", str(extensions), "-out", str(server_cert))
    return {"ca": ca_cert, "other_ca": other_cert, "cert": server_cert, "key": server_key}


@pytest.fixture
def secured_broker(broker_factory, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A broker that requires a password and restricts the gateway's user to autocore/#."""
    passwords, acl = tmp_path / "passwd", tmp_path / "acl"
    passwords.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "autocore", PASSWORD], check=True,
                   capture_output=True, timeout=30)
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "device", "device-pass"], check=True,
                   capture_output=True, timeout=30)
    acl.write_text("user autocore\ntopic readwrite autocore/#\n\nuser device\ntopic readwrite autocore/devices/#\n")
    return broker_factory(allow_anonymous=False,
                          extra_config=[f"password_file {passwords}", f"acl_file {acl}"])


def test_password_and_acl(env, secured_broker) -> None:  # type: ignore[no-untyped-def]
    env.broker = secured_broker
    gateway = env.gateway(MQTT_USERNAME="autocore", MQTT_PASSWORD=PASSWORD)
    env.register("esp32-can-001", "esp32_can")
    device = env.peer(auth=("device", "device-pass"))
    device.publish("autocore/devices/esp32-can-001/telemetry", fixture_bytes("telemetry_can.json"))
    wait_for(lambda: len(env.rows("SELECT * FROM telemetry_data")) == 3)
    assert PASSWORD not in gateway.log


def test_wrong_password_is_retried_quietly_then_exits_1(env, secured_broker) -> None:  # type: ignore[no-untyped-def]
    env.broker = secured_broker
    gateway = env.gateway(wait_ready=False, MQTT_USERNAME="autocore", MQTT_PASSWORD="wrong-" + PASSWORD,
                          AUTOCORE_CONNECT_TIMEOUT="4")
    assert gateway.proc.wait(30) == 1
    log = gateway.log
    assert "Not authorized" in log or "Bad user name or password" in log
    assert PASSWORD not in log and "Traceback" not in log
    assert log.count("cannot connect to broker") <= 3  # retried with backoff, not a flood


def test_tls_with_a_trusted_ca(env, broker_factory, tls_material) -> None:  # type: ignore[no-untyped-def]
    env.broker = broker_factory(extra_config=[f"cafile {tls_material['ca']}",
                                              f"certfile {tls_material['cert']}",
                                              f"keyfile {tls_material['key']}"])
    env.gateway(MQTT_TLS_CA_FILE=str(tls_material["ca"]))
    env.register("esp32-can-001", "esp32_can")
    device = env.peer(tls_ca=str(tls_material["ca"]))
    device.publish("autocore/devices/esp32-can-001/telemetry", fixture_bytes("telemetry_can.json"))
    wait_for(lambda: len(env.rows("SELECT * FROM telemetry_data")) == 3)


def test_tls_with_an_untrusted_certificate_exits_1(env, broker_factory, tls_material) -> None:  # type: ignore[no-untyped-def]
    env.broker = broker_factory(extra_config=[f"cafile {tls_material['ca']}",
                                              f"certfile {tls_material['cert']}",
                                              f"keyfile {tls_material['key']}"])
    gateway = env.gateway(wait_ready=False, MQTT_TLS_CA_FILE=str(tls_material["other_ca"]),
                          AUTOCORE_CONNECT_TIMEOUT="3")
    assert gateway.proc.wait(30) == 1
    assert "certificate verify failed" in gateway.log and "Traceback" not in gateway.log


# -- client certificates (mutual TLS) ------------------------------------------------------


def sign_client(folder: Path, name: str, ca_key: Path, ca_cert: Path) -> tuple[Path, Path]:
    """A client key and certificate (CN=name) signed by the given CA."""
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
            "-out", str(csr))
    extensions = folder / f"{name}.cnf"
    extensions.write_text("extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-extfile", str(extensions), "-out", str(cert))
    return key, cert


@pytest.fixture
def mtls_broker(broker_factory, tls_material, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A TLS broker that accepts only clients whose certificate the test CA signed; CN is the user."""
    return broker_factory(extra_config=[f"cafile {tls_material['ca']}",
                                        f"certfile {tls_material['cert']}",
                                        f"keyfile {tls_material['key']}",
                                        "require_certificate true",
                                        "use_identity_as_username true"])


def test_tls_with_a_client_certificate(env, mtls_broker, tls_material,  # type: ignore[no-untyped-def]
                                       tmp_path: Path) -> None:
    env.broker = mtls_broker
    ca_key = tmp_path / "test-ca.key"
    key, cert = sign_client(tmp_path, "autocore", ca_key, tls_material["ca"])
    gateway = env.gateway(MQTT_TLS_CA_FILE=str(tls_material["ca"]), MQTT_TLS_CERT_FILE=str(cert),
                          MQTT_TLS_KEY_FILE=str(key))
    env.register("esp32-can-001", "esp32_can")
    device_key, device_cert = sign_client(tmp_path, "esp32-can-001", ca_key, tls_material["ca"])
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="esp32-can-001")
    device.tls_set(ca_certs=str(tls_material["ca"]), certfile=str(device_cert), keyfile=str(device_key))
    device.connect(mtls_broker.host, mtls_broker.port, keepalive=30)
    device.loop_start()
    try:
        info = device.publish("autocore/devices/esp32-can-001/telemetry", fixture_bytes("telemetry_can.json"),
                              qos=1)
        info.wait_for_publish(10)
        wait_for(lambda: len(env.rows("SELECT * FROM telemetry_data")) == 3)
    finally:
        device.disconnect()
        device.loop_stop()
    assert gateway.alive() and "Traceback" not in gateway.log


@pytest.mark.parametrize("client_cert", ["none", "other-ca"])
def test_tls_without_a_trusted_client_certificate_exits_1(  # type: ignore[no-untyped-def]
        env, mtls_broker, tls_material, tmp_path: Path, client_cert: str) -> None:
    env.broker = mtls_broker
    settings = {"MQTT_TLS_CA_FILE": str(tls_material["ca"]), "AUTOCORE_CONNECT_TIMEOUT": "3"}
    if client_cert == "other-ca":
        key, cert = sign_client(tmp_path, "autocore", tmp_path / "other-ca.key", tls_material["other_ca"])
        settings.update(MQTT_TLS_CERT_FILE=str(cert), MQTT_TLS_KEY_FILE=str(key))
    gateway = env.gateway(wait_ready=False, **settings)
    assert gateway.proc.wait(30) == 1
    log = gateway.log
    # The broker's TLS alert, as OpenSSL words it (TLS 1.3, or 1.2 on older brokers).
    causes = {"none": ("certificate required", "handshake failure"),
              "other-ca": ("unknown ca", "bad certificate")}[client_cert]
    assert any(cause in log for cause in causes), log
    assert "cannot connect to broker" in log and "Traceback" not in log
    assert log.count("cannot connect to broker") <= 3  # retried with backoff, not a flood
