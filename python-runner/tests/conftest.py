"""Servers shared by the test modules (one per module, freed at its end) and
server_for(), which picks the server a transport needs."""
from pathlib import Path

import pytest

import mur

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "ts-server" / "native" / "build" / "Release" / "mur_native.node"


@pytest.fixture(scope="module")
def server():
    with mur.LocalServer() as s:
        yield s.address


@pytest.fixture(scope="module")
def native_server():
    with mur.LocalServer(backend="native") as s:
        yield s.address


@pytest.fixture(scope="module")
def wasm_server():
    with mur.LocalServer(backend="wasm") as s:
        yield s.address


@pytest.fixture
def server_for(request):
    """server_for(transport): the native engine's server for shm; any server for grpc."""
    def pick(transport):
        if transport == "shm":
            if not ADDON.exists():
                pytest.skip("the shm transport needs the native engine (make native-engine)")
            return request.getfixturevalue("native_server")
        return request.getfixturevalue("server")
    return pick
