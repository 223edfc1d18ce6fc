"""Servers autoprune starts listen on this machine only, unless the user asks otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoprune.procs import descendants
from autoprune.search import SearchOptions, _start_ray

LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return inodes


def _decode(address: str) -> str:
    """``0100007F`` (little-endian hex of /proc/net/tcp) → ``127.0.0.1``; IPv4-mapped IPv6 the same way."""
    if len(address) == 8:
        return ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0))
    if address.startswith("0000000000000000FFFF0000"):
        return _decode(address[-8:])
    return {"00000000000000000000000001000000": "::1", "00000000000000000000000000000000": "::"}.get(address, address)


def listening_addresses(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by one of ``pids``."""
    inodes = _socket_inodes(pids)
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN and fields[9] in inodes:
                host, port = fields[1].split(":")
                found.add((_decode(host), int(port, 16)))
    return found


@pytest.mark.timeout(120)
def test_the_local_ray_cluster_of_a_search_listens_on_loopback_only(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _start_ray(SearchOptions(studies=tmp_path), 1, tmp_path / "search.log")
    try:
        ray.get(ray.remote(lambda: 1).remote())  # a worker is up too
        addresses = listening_addresses(descendants([os.getpid()]))
    finally:
        ray.shutdown()
    assert len(addresses) >= 2  # the GCS, the raylet, the object manager ... were seen
    exposed = sorted(a for a in addresses if a[0] not in ("127.0.0.1", "::1"))
    assert not exposed, f"listening beyond loopback: {exposed}"
