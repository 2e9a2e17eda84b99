"""The GPU check's parts that run anywhere: the offline bundle, the points table, the import."""

from __future__ import annotations

import json

from benchmarks.gpu_points import RESULT_NAME, import_results, points_table
from benchmarks.gpu_setup import join_bundle, split_files


def test_a_bundle_split_into_halves_joins_back_byte_for_byte(tmp_path):
    sources = tmp_path / "download"
    sources.mkdir()
    sizes = {"a.whl": 7, "big.whl": 61, "c.whl": 13, "d.whl": 1}  # big: cut into pieces
    files = []
    for index, (name, size) in enumerate(sizes.items()):
        path = sources / name
        path.write_bytes(bytes((index * 31 + i) % 251 for i in range(size)))
        files.append(path)
    halves = split_files(files, tmp_path / "bundle", limit=20)
    assert all(sum(f.stat().st_size for f in h.iterdir()) <= 20 for h in halves)
    assert any(f.name.startswith("big.whl.part-") for h in halves for f in h.iterdir())
    joined = join_bundle((tmp_path / "bundle",), into=tmp_path / "wheels")
    assert sorted(p.name for p in joined) == sorted(sizes)
    for path in files:
        assert (tmp_path / "wheels" / path.name).read_bytes() == path.read_bytes()


def test_a_bundle_missing_a_piece_is_not_joined(tmp_path):
    big = tmp_path / "big.whl"
    big.write_bytes(b"x" * 50)
    split_files([big], tmp_path / "cut", limit=20)  # pieces 1, 2 and 3 in folders 1, 2, 3
    (tmp_path / "cut" / "2" / "big.whl.part-2").unlink()
    assert join_bundle((tmp_path / "cut",), into=tmp_path / "wheels") == []
    assert not (tmp_path / "wheels" / "big.whl").exists()


def test_the_points_table_shows_speeds_and_the_ratio_of_ok_pairs():
    def point(mode, length, status="ok", speed=0.0):
        return {
            "backend": "torch",
            "mode": mode,
            "length": length,
            "status": status,
            "tokens_per_second": speed,
            "peak_mib": 100.0,
        }

    table = points_table(
        [point("qllm", 128, speed=300.0), point("full", 128, speed=120.0), point("qllm", 256)]
    )
    lines = table.splitlines()
    assert lines[1].split()[-1] == "2.50x" and "300 (100 MiB)" in lines[1]
    assert lines[2].split()[-2:] == ["-", "-"]  # full not run at 256: no ratio


def test_a_dry_run_summary_is_not_imported(tmp_path, capsys):
    (tmp_path / RESULT_NAME).write_text(json.dumps({"kind": "dry run"}), encoding="utf-8")
    assert import_results(tmp_path) == 1
    assert "not a GPU machine" in capsys.readouterr().out
