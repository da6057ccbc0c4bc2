"""The kernel's view of a process tree's bytes (videofetchd.workers.liveness), on real processes
and real TCP connections: a grandchild receiving on a socket is movement, an idle tree is not."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers import wait_until
from videofetchd.workers.liveness import IoMeter, sample, tcp_bytes_received, tree

#: a child that starts a grandchild which connects to PORT and reads whatever arrives, forever
GRANDCHILD = """
import socket, sys, subprocess
if sys.argv[1] == "parent":
    subprocess.run([sys.executable, "-c", sys.argv[3], "reader", sys.argv[2]])
else:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    while s.recv(1 << 20):
        pass
"""


@pytest.fixture
def sender() -> tuple[socket.socket, list[socket.socket]]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    conns: list[socket.socket] = []
    threading.Thread(target=lambda: conns.append(srv.accept()[0]), daemon=True).start()
    return srv, conns


def test_bytes_received_by_a_grandchilds_socket_are_movement(sender: tuple[socket.socket, list[socket.socket]]) -> None:
    srv, conns = sender
    port = str(srv.getsockname()[1])
    proc = subprocess.Popen([sys.executable, "-c", GRANDCHILD, "parent", port, GRANDCHILD])
    try:
        wait_until(lambda: conns, timeout=20, message="the grandchild did not connect")
        assert len(wait_until(lambda: tree(proc.pid)[1:] or None, timeout=10)) == 1
        meter = IoMeter()
        assert meter.moved(proc.pid) is False  # the first sample is the baseline
        counters = sample(proc.pid)
        assert any(k.startswith("tcp:") for k in counters), counters  # the grandchild's socket is seen
        time.sleep(0.3)
        assert meter.moved(proc.pid) is False  # nothing arrived: no movement
        conns[0].sendall(b"x" * 100_000)
        assert wait_until(lambda: meter.moved(proc.pid), timeout=10, message="received bytes not seen")
        after = sample(proc.pid)
        assert max(n for k, n in after.items() if k.startswith("tcp:")) >= 100_000
    finally:
        proc.kill()
        proc.wait()
        for c in conns:
            c.close()
        srv.close()


def test_unknown_sockets_and_gone_processes() -> None:
    assert tcp_bytes_received(set()) == {}
    assert tcp_bytes_received({2**32 - 1}) == {}  # no socket has that inode
    assert IoMeter().moved(2**22 + 12345) is None  # no such process: nothing to tell
