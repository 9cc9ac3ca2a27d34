"""``natsgate`` with the garbage collector watched: ``python -m bench.gcprobe serve ...``.

Runs the gateway's own command line unchanged and prints one line per collection of the
oldest generation, and per collection of any generation that took 5 ms or more:
``gcprobe: gen=2 ms=412.3 collected=0``. ``bench.run`` starts natsgate this way for its
diagnostic cells (and for every cell with ``--gc-probe``) and reports the pauses; the
gateway itself is not modified.
"""

from __future__ import annotations

import gc
import sys
import time

_start = [0.0]


def _cb(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _start[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _start[0]) * 1000
    if info["generation"] == 2 or ms >= 5:
        print(
            f"gcprobe: gen={info['generation']} ms={ms:.1f} collected={info['collected']}",
            file=sys.stderr,
            flush=True,
        )


def main() -> int:
    gc.callbacks.append(_cb)
    from natsgate.cli import main as natsgate_main

    return natsgate_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
