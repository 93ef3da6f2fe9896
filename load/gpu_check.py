"""Check the GPU code paths on a machine that has GPUs (run on a lent device).

    python -m load.gpu_check

1. ``discover_gpus("auto")`` finds the GPUs through NVML;
2. the ledger hands each replica its own ids, never one twice;
3. a replica process started the way the process driver starts it
   (``CUDA_VISIBLE_DEVICES`` set to its ids) sees exactly the GPUs it was given.
Prints a table; exits 1 if a check fails. Needs nvidia-ml-py; step 3 uses nvidia-smi.
"""

from __future__ import annotations

import os
import subprocess
import sys

from gateway.control.gpus import GpuLedger, discover_gpus

CHILD = (
    "import os, subprocess; "
    "ids = os.environ['CUDA_VISIBLE_DEVICES']; "
    "out = subprocess.run(['nvidia-smi', '--query-gpu=index,uuid', '--format=csv,noheader', "
    "'-i', ids], capture_output=True, text=True, check=True).stdout; "
    "print(ids, len(out.strip().splitlines()))"
)


def main() -> int:
    gpus = discover_gpus("auto")
    rows = [("NVML discovery", f"{len(gpus)} GPU(s): {gpus}", bool(gpus))]
    ledger = GpuLedger(gpus)
    held = [ledger.allocate(f"r{i}", 1) for i in range(len(gpus) + 1)]
    given = [ids for ids in held if ids]
    distinct = len({i for ids in given for i in ids}) == len(given) == len(gpus)
    rows.append(("ledger, 1 GPU per replica", f"{given}, then {held[-1]}", distinct))
    for ids in given:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(ids)}
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
        seen = out.stdout.strip() or out.stderr.strip()[-200:]
        rows.append((f"replica with GPU {ids}", seen, out.returncode == 0 and seen.endswith(" 1")))
    for name, detail, ok in rows:
        print(f"{'ok ' if ok else 'FAIL'}  {name:28} {detail}")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
