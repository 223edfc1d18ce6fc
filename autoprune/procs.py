"""The machine's process table, read from Linux's ``/proc``.

One reader for what several parts need: ``autoprune ui`` asks whether its server's process
group still has live members, the tests find the processes a Ray cluster started, and the
benchmarks sum CPU time and memory over a process tree.

Example::

    for pid, fields in process_stats():
        state, parent = fields[0], int(fields[1])
    tree = descendants([os.getpid()])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

PROC = Path("/proc")


def process_stats() -> Iterator[tuple[int, list[str]]]:
    """Each live process's pid and the fields of its ``/proc/<pid>/stat`` after the command name.

    ``fields[0]`` is the state (``"Z"`` for a zombie), ``fields[1]`` the parent pid,
    ``fields[2]`` the process group; field *n* of ``proc(5)`` is ``fields[n - 3]``. The
    command name is skipped by its last ``)``, since it may itself hold spaces or parentheses.
    Processes that end while being read are left out.
    """
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        yield int(entry.name), fields


def command_line(pid: int) -> str:
    """The command line of ``pid``, its arguments joined by spaces ("" once it has ended)."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def children_by_parent() -> dict[int, list[int]]:
    """Every live process's children, by parent pid."""
    children: dict[int, list[int]] = {}
    for pid, fields in process_stats():
        children.setdefault(int(fields[1]), []).append(pid)
    return children


def descendants(roots: Iterable[int], children: dict[int, list[int]] | None = None) -> set[int]:
    """``roots`` and every process below them (``children`` from :func:`children_by_parent` if given)."""
    children = children_by_parent() if children is None else children
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found
