"""The tests' own servers get ports the kernel will not hand to another connection meanwhile, and an
ejabberd node whose port was taken after it was picked starts on another (CI once failed on that race)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from . import ejabberd_cluster
from .ports import free_port


def test_free_ports_are_bindable_and_below_the_ephemeral_range():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = free_port()
        assert port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


@pytest.mark.cluster
def test_an_ejabberd_node_whose_port_was_taken_starts_on_another(monkeypatch):
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", free_port()))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    picks = iter([taken])
    monkeypatch.setattr(ejabberd_cluster, "free_port", lambda: next(picks, None) or free_port())
    try:
        with ejabberd_cluster.EjabberdCluster(nodes=1) as cluster:
            assert cluster.ports[0] != taken
            with socket.create_connection(("127.0.0.1", cluster.ports[0]), timeout=5):
                pass
    finally:
        squatter.close()
