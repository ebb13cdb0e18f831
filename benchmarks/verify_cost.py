"""What checking an artifact against its manifest costs when it loads: the default check (sizes and sampled
chunks) and `--verify` (sha256 of every byte), on a file of random data the size of the full Stage C's external
data (7.19 GB).

    python benchmarks/verify_cost.py --dir /tmp --size-gb 7.19 --repeats 3

Each check is timed with the file in the page cache (`warm`, as right after an export or a previous load) and
after its pages are dropped with `posix_fadvise(DONTNEED)` (`cold`, as after a reboot; no root needed, nothing
else's cache is touched). The files are deleted at the end. Prints one JSON record per measurement and a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

CHUNK = 1 << 26  # 64 MiB of random data written at a time


def make_artifact(directory: Path, size: int) -> Path:
    """A tiny `big.onnx`, `big.onnx.data` of `size` random bytes, and the manifest an export would write."""
    from cascade_trt.artifacts import file_record, manifest_path, write_json

    model = directory / "big.onnx"
    model.write_bytes(b"graph")
    data = directory / "big.onnx.data"
    with open(data, "wb") as f:
        for start in range(0, size, CHUNK):
            f.write(os.urandom(min(CHUNK, size - start)))
    start = time.monotonic()
    files = {"onnx": file_record(model), "external_data": file_record(data)}
    print(json.dumps({"measure": "manifest written (sample + sha256)", "seconds": time.monotonic() - start}))
    write_json(manifest_path(model), {"kind": "onnx", "stage": "big", "precision": "bf16", "files": files})
    return model


def drop_from_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # only clean pages can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_check(model: Path, *, full: bool, cold: bool) -> float:
    from cascade_trt.artifacts import verify_artifact

    if cold:
        drop_from_cache(model.with_name(model.name + ".data"))
    start = time.monotonic()
    verify_artifact(model, full=full)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where to write the file (needs the space)")
    p.add_argument("--size-gb", type=float, default=7.19, help="size of the data file in GB (1e9 bytes)")
    p.add_argument("--repeats", type=int, default=3, help="timings of each check")
    args = p.parse_args(argv)
    size = int(args.size_gb * 1e9)
    directory = Path(tempfile.mkdtemp(prefix="verify-cost-", dir=args.dir))
    rows = []
    try:
        model = make_artifact(directory, size)
        for full in (False, True):
            for cold in (False, True):
                times = [time_check(model, full=full, cold=cold) for _ in range(args.repeats)]
                record = {
                    "check": "--verify (sha256)" if full else "default (sizes + samples)",
                    "cache": "cold" if cold else "warm",
                    "median_s": statistics.median(times),
                    "times_s": [round(t, 4) for t in times],
                    # the default check reads the same few hundred KiB whatever the size: no throughput
                    "mb_per_s": size / 1e6 / statistics.median(times) if full else None,
                }
                print(json.dumps(record), flush=True)
                rows.append(record)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"\n{size / 1e9:.2f} GB, {args.repeats} repeats\n\n| check | page cache | median | throughput |")
    print("|---|---|---|---|")
    for r in rows:
        rate = f"{r['mb_per_s']:,.0f} MB/s" if r["mb_per_s"] else "64 chunks of 4 KiB a file"
        median = f"{r['median_s']:.1f} s" if r["median_s"] >= 1 else f"{r['median_s'] * 1e3:.1f} ms"
        print(f"| {r['check']} | {r['cache']} | {median} | {rate} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
