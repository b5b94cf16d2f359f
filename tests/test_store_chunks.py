"""Feature chunks are encoded in parallel threads and written with write_direct_chunk: the bytes must be
exactly those HDF5's own filter pipeline (shuffle, gzip-1, fletcher32) writes, so any HDF5 reader opens
the file and fletcher32 still catches damage."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from featcache import store
from featcache.store.manifest import Manifest


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("shape", [(2048, 7, 7), (5,), (3, 1, 1)])
def test_encoded_chunks_are_byte_identical_to_hdf5s_own(tmp_path, dtype, shape):
    rng = np.random.default_rng(1)
    rows = store.chunk_rows(shape, dtype, 10_000)
    X = rng.standard_normal((rows * 2 + 1,) + shape).astype(dtype)  # two full chunks and an edge chunk
    X[rows:rows + 2] = 0
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        ds = f.create_dataset("x", data=X, chunks=(rows,) + shape, compression=store.COMPRESSION,
                              compression_opts=store.COMPRESSION_OPTS, shuffle=True, fletcher32=True)
        for k in range(3):
            reference = ds.id.read_direct_chunk((k * rows,) + (0,) * len(shape))[1]
            chunk = np.zeros((rows,) + shape, dtype)
            part = X[k * rows:(k + 1) * rows]
            chunk[:len(part)] = part
            assert store.encode_chunk(chunk) == reference
    assert store.fletcher32(b"") == 0 and store.fletcher32(b"\0\0\0") == 0


class Blocks:
    """A rows source whose blocks do not line up with chunks (as shards being merged)."""

    def __init__(self, X, sizes):
        self.X, self.sizes = X, sizes

    def n_rows(self):
        return len(self.X)

    def skipped(self):
        return {}

    def rows_in_order(self, block_rows):
        at = 0
        for n in self.sizes:
            yield np.arange(at, at + n), self.X[at:at + n]
            at += n


def test_unaligned_blocks_are_written_whole_and_damage_is_caught(tmp_path):
    rng = np.random.default_rng(2)
    shape = (64, 7, 7)
    X = rng.standard_normal((301,) + shape).astype("float16")
    n = len(X)
    manifest = Manifest(root=tmp_path, paths=[f"c/{i}.png" for i in range(n)], sizes=np.ones(n, np.int64),
                        mtimes=np.zeros(n, np.int64), labels=np.zeros(n, np.int32), splits=[""] * n, class_names=["c"])
    path = tmp_path / "x.h5"
    content = store.write_feature_set(path, {"id": "x", "data_root": str(tmp_path)}, manifest, Blocks(X, [7, 150, 1, 143]),
                                      shape, "float16")
    assert store.chunk_rows(shape, "float16", n) not in (7, 150, 1, 143)
    with store.FeatureSet(path) as fs:
        np.testing.assert_array_equal(fs.load(), X)
        assert fs.meta["content_sha256"] == content
    assert store.verify(path) == []
    raw = bytearray(path.read_bytes())
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info(1).byte_offset
    raw[offset + 100] ^= 0xFF
    path.write_bytes(raw)
    problems = store.verify(path)
    assert problems and any("checksum" in p or "unreadable" in p or "altered" in p for p in problems)
