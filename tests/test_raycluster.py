from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# Ray Tune leaves object references and actor handles in reference cycles. Freed by a garbage
# collection while ray.shutdown runs, one makes Ray end the whole process (exit code 1, no
# traceback): `autoprune search` died at its very end. RayCluster.stop collects them first.
GARBAGE_AT_STOP = textwrap.dedent("""
    import gc, weakref
    from pathlib import Path
    from types import SimpleNamespace
    import ray
    from autoprune.raycluster import RayCluster

    class Marker:
        pass

    cluster = RayCluster(SimpleNamespace(address=None, gpus=0, cpus_per_trial=1), 1, Path({log!r}))
    cluster.wait()
    gc.disable()  # the cycle stays until a collection, as Tune's do between collections

    @ray.remote(num_cpus=0)
    class Actor:
        def ping(self):
            return 1

    actor = Actor.remote()
    ray.get(actor.ping.remote())
    marker = Marker()
    cycle = [actor, ray.put(1), marker]
    cycle.append(cycle)
    alive = weakref.ref(marker)
    del actor, marker, cycle
    cluster.stop()
    print("garbage left during shutdown:", alive() is not None, flush=True)
    cluster.join()
    print("driver alive after shutdown", flush=True)
""")


def test_ray_garbage_is_collected_before_shutdown_begins(tmp_path: Path) -> None:
    script = GARBAGE_AT_STOP.format(log=str(tmp_path / "ray.log"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "garbage left during shutdown: False" in done.stdout
    assert "driver alive after shutdown" in done.stdout
