"""The manifest: header checks, per-row errors, the video root fence, duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from semiofed.client.deid.manifest import parse_roi, read_manifest
from semiofed.common.errors import ManifestError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_good_rows_resolve_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    manifest = _write(tmp_path / "m.csv",
                      "video,patient_id,seizure_id,label,onset_s,offset_s,generalization_s,view,roi\n"
                      "v/a.mp4,P1,S1,TCS,2.5,60,20,ceiling,0.1;0.2;0.9;1.0\n"
                      "v/b.mp4,P1,S2,FOS,,,,,\n")
    rows, errors = read_manifest(manifest)
    assert errors == []
    assert rows[0].video == (tmp_path / "v" / "a.mp4").resolve()
    assert (rows[0].onset_s, rows[0].offset_s, rows[0].generalization_s) == (2.5, 60.0, 20.0)
    assert rows[0].roi == (0.1, 0.2, 0.9, 1.0) and rows[0].view == "ceiling"
    assert rows[1].onset_s is None and rows[1].roi is None


@pytest.mark.parametrize("header, expected", [
    ("video,patient_id,label\n", "lacks column(s) seizure_id"),
    ("video,patient_id,seizure_id,label,mrn\n", "unknown column(s) mrn"),
])
def test_wrong_header_fails_the_manifest(tmp_path: Path, header: str, expected: str) -> None:
    with pytest.raises(ManifestError, match=expected.replace("(", r"\(").replace(")", r"\)")) as info:
        read_manifest(_write(tmp_path / "m.csv", header + "a.mp4,P1,S1,FOS\n"))
    assert "video,patient_id,seizure_id,label" in str(info.value)  # the fix names the header


def test_missing_and_empty_manifests(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "none.csv")
    with pytest.raises(ManifestError, match="has no rows"):
        read_manifest(_write(tmp_path / "m.csv", "video,patient_id,seizure_id,label\n"))


def test_bad_rows_fail_alone(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    manifest = _write(tmp_path / "root" / "m.csv",
                      "video,patient_id,seizure_id,label,onset_s,offset_s,roi\n"
                      "ok.mp4,P1,S1,FOS,,,\n"
                      "../outside.mp4,P2,S1,FOS,,,\n"
                      "/etc/passwd,P3,S1,FOS,,,\n"
                      "dup.mp4,P4,S1,TCS,,,\n"
                      "dup2.mp4,P4,S1,TCS,,,\n"
                      "x.mp4,P5,S1,Mrs Smith 2024,,,\n"
                      "x.mp4,P6,S1,FOS,ten,,\n"
                      "x.mp4,P7,S1,FOS,30,10,\n"
                      "x.mp4,P8,S1,FOS,,,0.5;0.5;0.2;0.9\n"
                      "x.mp4,,S1,FOS,,,\n")
    rows, errors = read_manifest(manifest)
    assert [r.patient_id for r in rows] == ["P1"]
    by_patient = {e.patient_id: e.message for e in errors}
    assert "outside the video root" in by_patient["P2"] and "outside the video root" in by_patient["P3"]
    assert "more than once" in by_patient["P4"] and sum(e.patient_id == "P4" for e in errors) == 2
    assert "not a short token" in by_patient["P5"]
    assert "not a number" in by_patient["P6"]
    assert "not after onset_s" in by_patient["P7"]
    assert "is empty" in by_patient["P8"]
    assert "patient_id is empty" in by_patient[""]
    assert all(e.message.startswith("line ") or "more than once" in e.message for e in errors)


def test_parse_roi() -> None:
    assert parse_roi("0;0;1;1") == (0.0, 0.0, 1.0, 1.0)
    for bad in ("0;0;1", "a;b;c;d", "0.5;0;0.4;1", "0;0;1.2;1"):
        with pytest.raises(ManifestError):
            parse_roi(bad)


@pytest.mark.parametrize("a, b", [("P001", "p001"), ("P001", "P-001"), ("P001", "P 1"), ("mrn_0042", "MRN.42"),
                                  ("Ｐ００１", "P001")])
def test_two_spellings_of_one_patient_id_are_refused_not_made_two_privacy_units(tmp_path: Path, a: str, b: str) -> None:
    manifest = _write(tmp_path / "m.csv", "video,patient_id,seizure_id,label\n"
                      f"a.mp4,{a},S1,FOS\nb.mp4,{b},S2,FOS\nc.mp4,P2,S1,TCS\nd.mp4,P10,S1,TCS\n")
    rows, errors = read_manifest(manifest)
    assert [r.patient_id for r in rows] == ["P2", "P10"]  # the other rows go on; P10 is not P1-0 or P1
    assert {e.patient_id for e in errors} == {a, b}
    for error in errors:
        assert error.message.startswith("line ") and "same patient" in error.message and "\n" not in error.message
        assert "write one id per patient" in error.message


def test_patient_key_keeps_different_patients_apart() -> None:
    from semiofed.client.deid.manifest import patient_key

    assert patient_key("P001") == patient_key("p-1") == "p1"
    assert len({patient_key(p) for p in ("P1", "P10", "P100", "P01A", "Q1", "P1B")}) == 6


def test_the_side_of_the_limb_signs_is_read_and_a_wrong_one_fails_its_row_alone(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    manifest = _write(tmp_path / "m.csv",
                      "video,patient_id,seizure_id,label,side\n"
                      "v/a.mp4,P1,S1,FOS,Left\n"
                      "v/b.mp4,P1,S2,FOS,\n"
                      "v/c.mp4,P2,S1,TCS,right\n"
                      "v/d.mp4,P3,S1,FOS,L\n")
    rows, errors = read_manifest(manifest)
    assert [r.side for r in rows] == ["left", None, "right"]
    (error,) = errors
    assert error.line == 5 and "side 'L' is not left or right" in error.message and "leave it empty" in error.message
    # a manifest written before the column existed still reads, with no side
    old = _write(tmp_path / "old.csv", "video,patient_id,seizure_id,label\nv/a.mp4,P1,S1,FOS\n")
    assert read_manifest(old)[0][0].side is None
