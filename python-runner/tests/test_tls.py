"""RemoteOptimizer over TLS and mutual TLS (tls_ca, tls_cert, tls_key), against
`mur-server --tls-cert --tls-key [--tls-client-ca]` started with the CLI.

Certificates are made at test time with the openssl command in a temporary
directory: a CA, a server certificate for 127.0.0.1 and localhost, a client
certificate the CA signed, and one from another CA."""

import shutil
import subprocess
import time

import grpc
import pytest
import torch
from conftest import ADDON, CLI, start_tcp, stop
from conftest import net as _net

import mur


def net(seed=0):
    return _net(seed, sizes=(4, 3, 1))


pytestmark = [
    pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} not built (make build)"),
    pytest.mark.skipif(
        shutil.which("openssl") is None, reason="the openssl command makes the test certificates (make apt)"
    ),
]
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl(d, *args):
    subprocess.run(["openssl", *args], cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_ca(d, name):
    openssl(
        d,
        "req",
        "-x509",
        *EC,
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN=mur test {name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )


def issue(d, ca, name, cn, ext):
    (d / f"{name}.ext").write_text(ext)
    openssl(d, "req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
    openssl(
        d,
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-set_serial",
        str(time.time_ns()),
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
    )
    return d / f"{name}.pem", d / f"{name}.key"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    return {
        "ca": d / "ca.pem",
        "server": issue(
            d, "ca", "server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        ),
        "client": issue(d, "ca", "client", "mur test client", "extendedKeyUsage=clientAuth\n"),
        "stranger": issue(d, "other-ca", "stranger", "mur stranger", "extendedKeyUsage=clientAuth\n"),
    }


@pytest.fixture(scope="module")
def tls_server(certs):
    cert, key = certs["server"]
    proc, info = start_tcp("--tls-cert", cert, "--tls-key", key)
    assert info["tls"] == "server"
    yield info["port"]
    stop(proc)


@pytest.fixture(scope="module")
def mtls_server(certs):
    cert, key = certs["server"]
    proc, info = start_tcp("--tls-cert", cert, "--tls-key", key, "--tls-client-ca", certs["ca"])
    assert info["tls"] == "mutual"
    yield info["port"]
    stop(proc)


def train(address, steps=3, transport="grpc", **kw):
    """A few Adam/hybrid steps over `address`; the final parameters."""
    model = net()
    opt = mur.RemoteOptimizer(
        model.parameters(),
        optimizer="adam",
        rule="hybrid",
        server=address,
        transport=transport,
        lr=0.01,
        timeout=20,
        **kw,
    )
    try:
        assert opt.transport == transport
        g = torch.Generator().manual_seed(1)
        for _ in range(steps):
            x, y = torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    finally:
        opt.close()
    return [p.detach().clone() for p in model.parameters()]


def refused(address, **kw):
    """The TLS handshake fails: the server is never reached (not a timeout, not a lost connection)."""
    with pytest.raises(mur.ServerUnreachableError, match="cannot reach a mur server") as e:
        mur.RemoteOptimizer(net().parameters(), server=address, transport="grpc", timeout=5, **kw)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_tls_server_refuses_plaintext_and_an_unknown_ca(tls_server, certs):
    refused(f"127.0.0.1:{tls_server}")
    refused(f"127.0.0.1:{tls_server}", tls_ca=certs["stranger"][0].parent / "other-ca.pem")


def test_a_client_trusting_the_ca_trains_like_a_plaintext_one(tls_server, certs):
    plain = train("auto")  # a local plaintext server
    for address in (f"127.0.0.1:{tls_server}", f"localhost:{tls_server}"):
        over_tls = train(address, tls_ca=certs["ca"])  # a path
        assert all(torch.equal(a, b) for a, b in zip(plain, over_tls)), address
    assert all(
        torch.equal(a, b) for a, b in zip(plain, train(f"localhost:{tls_server}", tls_ca=certs["ca"].read_bytes()))
    )


@pytest.mark.parametrize("mutual", [False, True])
def test_the_tcp_data_plane_uses_tls_too(tls_server, mtls_server, certs, mutual):
    """The data port speaks TLS with the gRPC port's certificates (and asks
    for a client certificate under mTLS); the trajectory is gRPC's."""
    kw = dict(tls_ca=certs["ca"])
    if mutual:
        cert, key = certs["client"]
        kw.update(tls_cert=cert, tls_key=key)
    address = f"localhost:{mtls_server if mutual else tls_server}"
    plain = train("auto")
    assert all(torch.equal(a, b) for a, b in zip(plain, train(address, transport="tcp", **kw)))


def test_the_tls_data_port_refuses_plaintext_and_strangers(mtls_server, certs):
    import socket
    import ssl

    caps_port = None
    opt = mur.RemoteOptimizer(
        net().parameters(),
        server=f"localhost:{mtls_server}",
        transport="grpc",
        timeout=20,
        tls_ca=certs["ca"],
        tls_cert=certs["client"][0],
        tls_key=certs["client"][1],
    )
    try:
        caps_port = opt._caps.data_port
    finally:
        opt.close()
    assert caps_port
    # Plaintext bytes get no answer but a closed connection.
    with socket.create_connection(("127.0.0.1", caps_port), timeout=10) as s:
        s.sendall(b"\x05\x00\x00\x00hello")
        assert s.recv(1) == b""
    # A client certificate from another CA is refused in the handshake.
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    ctx.load_cert_chain(*map(str, certs["stranger"]))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with socket.create_connection(("127.0.0.1", caps_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"\x00\x00\x00\x00")
                if s.recv(1) == b"":
                    raise ConnectionError("closed")


def test_mutual_tls_needs_a_certificate_the_ca_signed(mtls_server, certs):
    address = f"localhost:{mtls_server}"
    refused(address, tls_ca=certs["ca"])  # no client certificate
    cert, key = certs["stranger"]
    refused(address, tls_ca=certs["ca"], tls_cert=cert, tls_key=key)
    cert, key = certs["client"]
    assert len(train(address, tls_ca=certs["ca"], tls_cert=cert, tls_key=key.read_bytes())) == 4


def test_a_certificate_without_its_key_is_a_value_error(tls_server, certs):
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        mur.RemoteOptimizer(net().parameters(), server=f"localhost:{tls_server}", tls_cert=certs["client"][0])


@pytest.mark.skipif(not ADDON.exists(), reason="the shm transport needs the native engine")
def test_control_over_tls_data_in_shared_memory(mtls_server, certs):
    cert, key = certs["client"]
    model = net()
    opt = mur.RemoteOptimizer(
        model.parameters(),
        server=f"localhost:{mtls_server}",
        transport="shm",
        tls_ca=certs["ca"],
        tls_cert=cert,
        tls_key=key,
    )
    try:
        assert opt.transport == "shm"
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
    finally:
        opt.close()
