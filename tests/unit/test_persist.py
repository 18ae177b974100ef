"""State files are replaced atomically; a corrupt one is set aside, never trusted."""

from __future__ import annotations

import json
from pathlib import Path

from controller.persist import read_json, write_json_atomic


def test_round_trip_and_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    write_json_atomic(path, {"paused": True})
    assert read_json(path) == {"paused": True}
    assert path.stat().st_mode & 0o777 == 0o600
    write_json_atomic(path, {"paused": False})
    assert read_json(path) == {"paused": False}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"], "no temp files left behind"


def test_torn_temp_file_does_not_affect_the_stored_state(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json_atomic(path, {"cap_watts": 1000})
    # a writer killed mid-write leaves only its temp file; the real file is intact
    (tmp_path / ".state.json.999.tmp").write_text('{"cap_watts": 99')
    assert read_json(path) == {"cap_watts": 1000}


def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"paused": tru')
    assert read_json(path) is None
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_text() == '{"paused": tru'
    assert not path.exists()


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert read_json(tmp_path / "absent.json") is None
    write_json_atomic(tmp_path / "x.json", [1, 2])
    assert json.loads((tmp_path / "x.json").read_text()) == [1, 2]
