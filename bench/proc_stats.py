"""What a long run watches of a process, read from /proc, and the trend of a series over time.

Shared by the soaks (bench/soak_sidecar.py, bench/operator_day.py): resident memory, open file
descriptors sorted by what they are (a socket to whom, a file, a pipe), and a least-squares slope
per hour.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

# /proc/net/tcp state column: 0A = LISTEN, 01 = ESTABLISHED
_LISTEN = "0A"


def rss_mb(pid: int) -> float:
    """Resident memory now (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} has no VmRSS (a zombie?)")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _sockets() -> dict[str, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) of every TCP socket of this network namespace."""
    sockets: dict[str, tuple[int, int, str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
                sockets[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
    return sockets


def fd_census(pid: int, served_ports: Collection[int], peers: Mapping[int, str]) -> Counter[str]:
    """The process's open descriptors by kind: ``listening`` sockets, ``clients`` (connections to
    one of ``served_ports``), connections to a port of ``peers`` under that port's name, ``tcp_other``,
    ``socket_other`` (unix, netlink), ``file``, ``pipe``, ``anon`` (epoll, eventfd, timerfd)."""
    tcp = _sockets()
    census: Counter[str] = Counter()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except FileNotFoundError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            entry = tcp.get(target[8:-1])
            if entry is None:
                census["socket_other"] += 1
            elif entry[2] == _LISTEN:
                census["listening"] += 1
            elif entry[0] in served_ports:
                census["clients"] += 1
            elif entry[1] in peers:
                census[peers[entry[1]]] += 1
            else:
                census["tcp_other"] += 1
        elif target.startswith("pipe:"):
            census["pipe"] += 1
        elif target.startswith("anon_inode:"):
            census["anon"] += 1
        else:
            census["file"] += 1
    return census


def slope_per_hour(t_seconds: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against time, in units per hour (0 for fewer than 2 points)."""
    if len(t_seconds) < 2:
        return 0.0
    slope, _ = np.polyfit(np.asarray(t_seconds, float), np.asarray(values, float), 1)
    return float(slope) * 3600.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used so far (/proc/PID/stat), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")
