"""Listing one day (288 keys) and one window (1 key) in a bucket of N keys, with and without the
stand-in's S3 listing index (local/s3index.py, issue 23):
``python -m bench.listing [--sizes 10000 100000] [--repeat 5]``.

The stand-in's own server (faults off) runs in this process; the bucket is filled through moto's backend
(HTTP PUTs of 100k objects would take minutes and measure nothing listed here), and each day is listed
the pipeline's way, ``store.list_keys`` over HTTP (ListObjectsV2 pages of 1000). The same bucket is
listed with the index and with moto's own listing code (the index uninstalled), median of ``--repeat``
listings each. Prints a markdown table with the command and the machine. Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import shlex
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import machine
from include.price_pipeline import layout, store
from local import faults, s3index
from local.standin import FaultyMotoServer, client, credentials

DAY = datetime(2025, 7, 1, tzinfo=UTC)
SLOTS_PER_DAY = 288


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fill(backend, bucket: str, keys: int) -> tuple[str, str]:
    """``keys`` raw-record keys, 288 a day from DAY on; the prefixes of a day in the middle and of its noon
    window (what a sensor pokes)."""
    days = max(1, keys // SLOTS_PER_DAY)
    for n in range(keys):
        slot = DAY + timedelta(days=n // SLOTS_PER_DAY, minutes=5 * (n % SLOTS_PER_DAY))
        backend.put_object(bucket, layout.ingestion_key(slot, ".json", pair="ETH/USDT"), b"{}")
    noon = DAY + timedelta(days=days // 2, hours=12)
    return layout.INGESTION_PREFIX + layout.partition(noon), layout.ingestion_window_prefix(noon)


def _median_ms(s3, bucket: str, prefix: str, repeat: int) -> tuple[float, int]:
    times, listed = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        listed = len(store.list_keys(s3, bucket, prefix))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), listed


def measure(sizes: list[int], repeat: int) -> dict:
    """Each size's bucket listed by day and by window, with moto's listing and with the index (ms)."""
    from moto.s3.models import s3_backends

    index = s3index.S3ListingIndex()
    port = _free_port()
    with tempfile.TemporaryDirectory() as state_dir:
        key = credentials(Path(state_dir))
    server = FaultyMotoServer(faults.FaultInjector(faults.parse_spec("off")), key, ip_address="127.0.0.1", port=port)
    server.start()
    s3 = client("s3", f"http://127.0.0.1:{port}", key)
    rows = []
    try:
        for size in sizes:
            bucket = f"bench-listing-{size}"
            index.install()  # the bucket gets an indexed key store
            s3.create_bucket(Bucket=bucket)
            backend = s3_backends["123456789012"]["aws"]
            print(f"filling {bucket} with {size:,} keys ...", file=sys.stderr, flush=True)
            prefixes = _fill(backend, bucket, size)
            for prefix, label in zip(prefixes, ("one day", "one window"), strict=True):
                index.install()
                with_index, listed = _median_ms(s3, bucket, prefix, repeat)
                index.uninstall()  # moto's own listing code, same bucket
                without_index, listed_plain = _median_ms(s3, bucket, prefix, repeat)
                assert listed == listed_plain, (listed, listed_plain)
                rows.append(
                    {
                        "keys": size,
                        "prefix": label,
                        "listed": listed,
                        "moto_ms": without_index,
                        "indexed_ms": with_index,
                    }
                )
            backend.buckets.pop(bucket)  # frees its keys: make bench goes on in this process
    finally:
        index.uninstall()
        server.stop()
    return {"repeat": repeat, "rows": rows}


def report(results: dict | None) -> str:
    """The markdown section of ``make bench``'s report."""
    if not results:
        return ""
    lines = [
        "",
        "## S3 listing on the stand-in: moto's scan against the index",
        "",
        "`python -m bench.listing` (part of `make bench`): one day (288 keys) and one window (1 key) of raw "
        "records listed the pipeline's way (`store.list_keys`, ListObjectsV2 over HTTP) in a bucket of N keys, "
        f"median of {results['repeat']} listings each, with moto's own listing code (every key of the bucket "
        "visited per call) and with the stand-in's index (local/s3index.py). Real S3 lists by prefix, so the "
        "indexed column is the one the other figures here are measured with.",
        "",
        "| keys in bucket | prefix listed | moto's listing (ms) | with the index (ms) | speed-up |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        listed = f"{row['prefix']} ({row['listed']} key{'' if row['listed'] == 1 else 's'})"
        lines.append(
            f"| {row['keys']:,} | {listed} | {row['moto_ms']:.1f} | {row['indexed_ms']:.1f} "
            f"| {row['moto_ms'] / row['indexed_ms']:.0f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="keys in the bucket")
    parser.add_argument("--repeat", type=int, default=5, help="listings per figure (the median is shown)")
    args = parser.parse_args(argv)
    results = measure(args.sizes, args.repeat)
    info = machine.describe()
    print(f"Command: `{shlex.join(['.venv/bin/python', '-m', 'bench.listing', *argv])}`  ")
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB, Python {info['python']}, "
        f"{info['os']}; load {machine.load_average()}  "
    )
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
