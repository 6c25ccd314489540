"""Bounded IDX reading: a header's claim is checked before the data are read, and gzip streams are
decompressed only as far as the declared size, so a "gzip bomb" or a lying header cannot exhaust memory."""

import gzip
import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pyro_vae import data
from pyro_vae.errors import ConfigError, DataError


def write_claim(path, num_images, zero_bytes, size=28):
    """An IDX image file (gzip) whose header claims ``num_images`` images of size x size pixels, followed by
    ``zero_bytes`` zeros, written in pieces so that the test itself never holds them in memory."""
    with gzip.open(path, "wb") as handle:
        handle.write(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", num_images, size, size))
        piece = bytes(1 << 20)
        for _ in range(zero_bytes // len(piece)):
            handle.write(piece)
        handle.write(bytes(zero_bytes % len(piece)))
    return path


def test_a_header_above_the_limit_is_refused_and_the_limit_is_a_keyword(tmp_path):
    bomb = write_claim(tmp_path / "bomb-idx.gz", 10**9, 4 << 20)
    assert bomb.stat().st_size < 100_000      # 4 MiB of zeros in a few kB
    with pytest.raises(DataError, match=r"shape \(1000000000, 28, 28\)\) declares 784,000,000,000 bytes of data, "
                                        r"above the limit of 4,294,967,296 bytes \(pyro_vae.data.MAX_DATA_BYTES\)"):
        data.read_idx(bomb)
    # a caller who expects a small file can lower the limit, and one with a huge file raise it
    small = write_claim(tmp_path / "small-idx.gz", 3, 3 * 28 * 28)
    with pytest.raises(DataError, match="declares 2,352 bytes .* above the limit of 2,351 bytes.*max_bytes=N"):
        data.read_idx(small, max_bytes=2351)
    assert data.read_idx(small, max_bytes=2352).shape == (3, 28, 28)
    with pytest.raises(ConfigError, match="max_bytes must be a positive integer"):
        data.read_idx(small, max_bytes=0)


def test_a_claim_larger_than_the_data_is_refused_as_truncated(tmp_path):
    # one image short, raw and gzipped
    images = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28)
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 6, 28, 28)
    (tmp_path / "raw-idx").write_bytes(header + images.tobytes())
    (tmp_path / "gz-idx.gz").write_bytes(gzip.compress(header + images.tobytes()))
    for name in ("raw-idx", "gz-idx.gz"):
        with pytest.raises(DataError, match=r"corrupt or truncated \(shape \(6, 28, 28\) needs 4704 data bytes, "
                                            r"found 3920\)"):
            data.read_idx(tmp_path / name)


MEASURE = textwrap.dedent("""
    import json, resource, sys, time, tracemalloc
    from pyro_vae import data
    from pyro_vae.errors import DataError

    results = {}
    for path in sys.argv[1:]:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        start = time.perf_counter()
        try:
            data.read_idx(path)
            message = None
        except DataError as error:
            message = str(error)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before   # kB on Linux
        results[path] = {"message": message, "seconds": seconds, "traced_mb": peak / 2**20,
                         "rss_growth_mb": grown / 1024}
    print(json.dumps(results))
""")


def test_memory_stays_bounded_for_a_gzip_bomb_and_a_lying_header(tmp_path):
    # 10**9 images claimed (784 GB), 64 MiB of zeros behind the header (~64 kB on disk)
    bomb = write_claim(tmp_path / "bomb-idx.gz", 10**9, 64 << 20)
    # 4 million images claimed (3.1 GB, under the limit), 64 MiB present: read only as far as it goes
    lying = write_claim(tmp_path / "lying-idx.gz", 4_000_000, 64 << 20)
    # a plain file with the same lie: refused from its size alone
    with open(tmp_path / "lying-raw-idx", "wb") as handle:
        handle.write(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 4_000_000, 28, 28) + bytes(1 << 20))
    paths = [str(bomb), str(lying), str(tmp_path / "lying-raw-idx")]
    # a fresh process, so the peak resident size measures this reading and nothing the test suite did before
    result = subprocess.run([sys.executable, "-c", MEASURE, *paths], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    bomb_result, lying_result, raw_result = (measured[path] for path in paths)
    assert "above the limit" in bomb_result["message"]
    assert bomb_result["seconds"] < 1 and bomb_result["traced_mb"] < 1
    assert "needs 3136000000 data bytes, found 67108864" in lying_result["message"]
    assert "needs 3136000000 data bytes, found 1048576" in raw_result["message"]
    for numbers in measured.values():
        # the 64 MiB actually present, with room for a growing buffer; never the 3 GB the header promises
        assert numbers["traced_mb"] < 200 and numbers["rss_growth_mb"] < 300, numbers
    assert raw_result["traced_mb"] < 1
