"""The adapter artifact (rollout.adapter_artifact) from hand-made bytes: identity and manifest,
checksum, the atomic writer with its STABLE marker, the reader, and one checksum per load."""

import os

import pytest

import rollout.adapter_artifact as aa
from rollout.adapter_artifact import (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, STABLE, AdapterArtifact, read_artifact, read_manifest, write_artifact,
)
from rollout.engine.base import AdapterRejected

pytestmark = pytest.mark.unit

FILES = {ADAPTER_CONFIG: b'{"r": 8}', ADAPTER_WEIGHTS: b"abc"}
ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
"""sha256("abc"), the FIPS 180-2 test vector."""


def art(version=1, role="observer", **extra):
    return AdapterArtifact.build(role, version, "tiny-vlm", FILES, **extra)


def flipped(a: AdapterArtifact) -> AdapterArtifact:
    """Same identity with one byte of the weights flipped: what a bad transfer delivers."""
    return AdapterArtifact(a.role, a.version, a.sha256, a.base_model, {**a.files, ADAPTER_WEIGHTS: b"abd"})


def test_build_computes_checksum_dirname_and_manifest():
    a = art(3, learner_step=12)
    assert a.sha256 == ABC and a.dirname == "v3-ba7816bf8f01"
    assert a.manifest == {"format": "duet-rl-adapter/1", "role": "observer", "version": 3, "base_model": "tiny-vlm",
                          "sha256": ABC, "learner_step": 12}
    assert a.nbytes == 8 + 3 + len(a.files[MANIFEST])
    a.verify()


def test_manifest_is_added_from_the_fields_and_must_agree_with_them():
    plain = AdapterArtifact("policy", 2, ABC, "m", FILES)
    assert plain.manifest == {"format": "duet-rl-adapter/1", "role": "policy", "version": 2, "base_model": "m",
                              "sha256": ABC}
    assert AdapterArtifact.from_files(plain.files) == plain
    with pytest.raises(ValueError, match=r"disagrees .*\['version'\]"):
        AdapterArtifact("policy", 3, ABC, "m", plain.files)
    with pytest.raises(ValueError, match="manifest.json"):
        AdapterArtifact.from_files(FILES)


@pytest.mark.parametrize("kwargs, message", [
    (dict(role="../policy"), "role"),
    (dict(role=""), "role"),
    (dict(version=0), "version"),
    (dict(sha256="XYZ"), "sha256"),
])
def test_identity_validation(kwargs, message):
    fields = dict(role="policy", version=1, sha256=ABC, base_model="m", files=FILES) | kwargs
    with pytest.raises(ValueError, match=message):
        AdapterArtifact(**fields)


def test_requires_both_peft_files_and_plain_names():
    with pytest.raises(ValueError, match="missing"):
        AdapterArtifact("policy", 1, ABC, "m", {ADAPTER_WEIGHTS: b""})
    for bad in ("../x", ".hidden", STABLE):
        with pytest.raises(ValueError, match="plain file names"):
            AdapterArtifact("policy", 1, ABC, "m", {**FILES, bad: b""})


def test_corrupt_bytes_are_refused_naming_the_file():
    with pytest.raises(AdapterRejected, match=r"observer v1: sha256 of adapter_model.safetensors is a52d159f262b\.\.\., "
                                              r"expected ba7816bf8f01\.\.\."):
        flipped(art()).verify()


def test_write_then_read_round_trip(tmp_path):
    a = art(4, learner_step=9)
    out = write_artifact(a, tmp_path / "observer" / "v4")
    assert sorted(os.listdir(out)) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, STABLE])
    assert (out / STABLE).read_text() == ABC
    assert read_artifact(out) == a and read_manifest(out)["learner_step"] == 9
    assert os.listdir(tmp_path / "observer") == ["v4"]  # no temporary directory left


def test_stable_is_written_last(tmp_path, monkeypatch):
    written = []
    real = aa.fsync_write
    monkeypatch.setattr(aa, "fsync_write", lambda path, data: (written.append(path.name), real(path, data)))
    write_artifact(art(), tmp_path / "v1")
    assert written[-1] == STABLE and sorted(written[:-1]) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST])


def test_writer_keeps_the_same_artifact_and_refuses_another(tmp_path):
    d = write_artifact(art(), tmp_path / "v1")
    stamp = os.stat(d / STABLE).st_mtime_ns
    assert write_artifact(art(), d) == d and os.stat(d / STABLE).st_mtime_ns == stamp  # kept, not rewritten
    other = AdapterArtifact.build("observer", 1, "tiny-vlm", {**FILES, ADAPTER_WEIGHTS: b"xyz"})
    with pytest.raises(FileExistsError, match="another or an incomplete"):
        write_artifact(other, d)


def test_reader_refuses_incomplete_and_corrupt_directories(tmp_path):
    d = write_artifact(art(), tmp_path / "v1")
    (d / ADAPTER_WEIGHTS).write_bytes(b"abd")
    with pytest.raises(AdapterRejected, match=f"sha256 of {d}/adapter_model.safetensors"):
        read_artifact(d)
    (d / STABLE).unlink()
    with pytest.raises(ValueError, match="no STABLE marker"):
        read_artifact(d)


# one checksum per load (materialize + the engine's check): tests/test_adapters.py
