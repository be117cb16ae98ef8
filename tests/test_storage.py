import hashlib
import os
from pathlib import Path

import pytest

from singinghead.storage import files
from singinghead.storage.catalog import Catalog


def test_atomic_write_and_checksum(tmp_path):
    url = str(tmp_path / "a" / "b.json")
    ref = files.write_json_atomic(url, {"x": 1})
    data = Path(url).read_bytes()
    assert ref.sha256 == hashlib.sha256(data).hexdigest() == files.sha256_file(url)[0]
    assert ref.size == len(data)
    assert os.listdir(tmp_path / "a") == ["b.json"]  # no temp file left behind


def test_crash_during_write_publishes_nothing(tmp_path):
    url = tmp_path / "out.bin"
    url.write_bytes(b"finished before")
    with pytest.raises(RuntimeError), files.atomic_output(url) as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("worker died")
    assert url.read_bytes() == b"finished before"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_catalog_lookup_requires_intact_outputs(tmp_path):
    cat = Catalog(tmp_path)
    ref = files.write_bytes_atomic(str(tmp_path / "art.bin"), b"payload")
    inputs = {"video": "a" * 64}
    assert cat.lookup("step", "1", {"p": 1}, inputs) is None
    cat.record("step", "1", {"p": 1}, inputs, [ref])
    assert cat.lookup("step", "1", {"p": 1}, inputs).outputs[0].sha256 == ref.sha256
    assert cat.lookup("step", "2", {"p": 1}, inputs) is None  # new step version
    assert cat.lookup("step", "1", {"p": 2}, inputs) is None  # other parameters
    assert cat.lookup("step", "1", {"p": 1}, {"video": "b" * 64}) is None  # other input
    (tmp_path / "art.bin").write_bytes(b"trunc")
    assert cat.lookup("step", "1", {"p": 1}, inputs) is None  # damaged output: not done


def test_raw_checksum_cache_follows_changes(tmp_path):
    cat = Catalog(tmp_path / "out")
    raw = tmp_path / "raw.wav"
    raw.write_bytes(b"one")
    assert cat.raw_checksum(raw)[0] == hashlib.sha256(b"one").hexdigest()
    raw.write_bytes(b"two!")
    assert cat.raw_checksum(raw) == (hashlib.sha256(b"two!").hexdigest(), 4)


def test_errors_cross_process_boundaries_intact():
    """Dask pickles a task's exception back to the flow: the file and the problem must survive."""
    import pickle

    from singinghead.schemas.errors import InputError, ManifestError, ReleaseError

    for err in (InputError("takes/t1/mic.wav", "silent"), ManifestError("session.yaml", ["a", "b"]),
                ReleaseError("rel/v1", "corrupt shard")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
