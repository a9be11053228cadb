"""PredictionClient against the server: top-k equals local scoring; TLS with a certificate made here."""

import datetime
import ipaddress

import grpc
import numpy as np
import pytest

from tessera.host import PredictionClient
from tessera.host import tinyclassifier as tc
from tessera.host.model import ImageModel
from tessera.host.runtime import Runtime
from tessera.host.server import ModelServer

from .conftest import photo

LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def local_top(program):
    model = ImageModel(program)
    rt = Runtime(program)
    yield lambda data, k=5: model.top(rt.run(model.inputs(data)), k)
    rt.close()


@pytest.fixture(scope="module")
def server(program):
    with ModelServer(program, host=LOOPBACK, port=0, model_name="resnet50") as srv:
        yield srv


def test_score_file_returns_labelled_topk(server, local_top, tmp_path):
    path = tmp_path / "cat.jpg"
    path.write_bytes(photo(5, fmt="JPEG"))
    with PredictionClient(LOOPBACK, server.port, use_ssl=False, service_name="resnet50") as client:
        top5 = client.score_file(str(path), input_name="images", outputs=[tc.PROBS])
        assert top5 == local_top(path.read_bytes())
        assert all(isinstance(lab, str) and 0 < p < 1 for lab, p in top5)
        # Without outputs the server's metadata names the scores; ranking raw logits softmaxes them first.
        assert client.score_image(path.read_bytes(), top=2) == local_top(path.read_bytes(), 2)
        by_logits = client.score_image(path.read_bytes(), outputs=[tc.LOGITS])
        assert [lab for lab, _ in by_logits] == [lab for lab, _ in top5]
        np.testing.assert_allclose([p for _, p in by_logits], [p for _, p in top5], atol=1e-5)


def test_client_predict_tensors_and_errors(server, program):
    x = np.random.default_rng(3).normal(0, 30, size=(2, 3, 16, 16)).astype(np.float32)
    with PredictionClient(LOOPBACK, server.port, service_name="resnet50") as client, Runtime(program) as rt:
        out = client.predict({tc.INPUT: x}, [tc.LOGITS])
        assert out[tc.LOGITS].shape == (2, 1000)
        np.testing.assert_array_equal(out[tc.LOGITS][1:], rt.run({tc.INPUT: x[1:]})[tc.LOGITS])
        with pytest.raises(grpc.RpcError) as e:
            client.score_image(b"garbage")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with PredictionClient(LOOPBACK, server.port, service_name="vgg16") as client:
        with pytest.raises(grpc.RpcError) as e:
            client.score_image(photo(1))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "cert.pem", tmp_path / "key.pem", cert_pem


def test_tls_server_and_client(program, local_top, tmp_path):
    cert, key, cert_pem = self_signed(tmp_path)
    data = photo(21, fmt="JPEG")
    with ModelServer(program, host=LOOPBACK, port=0, tls_cert=cert, tls_key=key) as srv:
        with PredictionClient(LOOPBACK, srv.port, use_ssl=True, service_name="tiny",
                              root_certificates=cert_pem, timeout=20) as client:
            assert client.score_image(data) == local_top(data)
        # A plaintext client cannot talk to the TLS port.
        with PredictionClient(LOOPBACK, srv.port, use_ssl=False, service_name="tiny", timeout=5) as client:
            with pytest.raises(grpc.RpcError) as e:
                client.predict({"images": [data]})
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_needs_cert_and_key(program, tmp_path):
    from tessera.errors import UserError
    with pytest.raises(UserError, match="both --tls-cert and --tls-key"):
        ModelServer(program, port=0, tls_cert=tmp_path / "c.pem")
    with pytest.raises(UserError, match="cannot read"):
        ModelServer(program, port=0, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")


def test_ipv6_loopback(program, local_top):
    import socket
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    data = photo(22)
    with ModelServer(program, host="::1", port=0) as srv, \
            PredictionClient("[::1]", srv.port, service_name="tiny", timeout=20) as client:
        assert client.score_image(data) == local_top(data)
