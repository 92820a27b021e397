"""``write_json_atomic`` is atomic for a reader that reads while it rewrites.

summary.json, run.json, proc.json and latest.json are rewritten while the app, ``cockpit ls``
and other engines read them. A reader must see the old file or the new one, whole — never an
empty file (an in-place rewrite truncates first) nor half of one. A temp file in the same
folder renamed over the old one gives that (POSIX rename(2) is atomic for other processes'
opens); writing in place does not, and this test catches it: a reader thread polls the file
with the real reader (``read_json_checked``) while the main thread rewrites it many times.
The writes are large (about 256 kB) so that an in-place write is caught half-done.
"""

from __future__ import annotations

import json
import os
import threading

from engine.torchfree.runfolder import read_json_checked, write_json_atomic

REWRITES = 200
PAD = 1 << 18  # bytes of padding: an os.write this size is not one instant


def _version(i: int) -> dict:
    return {"version": i, "status": "running", "pad": "x" * PAD, "end": i}


def test_a_concurrent_reader_never_sees_a_torn_or_empty_file(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, _version(0))
    problems: list[str] = []
    seen: list[int] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            value, problem = read_json_checked(path)
            if problem is not None or value is None:
                problems.append(problem or "missing")
                continue
            if len(value.get("pad", "")) != PAD or value.get("end") != value.get("version"):
                problems.append(f"a mixed file: version {value.get('version')}")
                continue
            seen.append(value["version"])

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        for i in range(1, REWRITES + 1):
            write_json_atomic(path, _version(i))
            if i % 50 == 0 and not t.is_alive():
                break
    finally:
        done.set()
        t.join(timeout=30)
    assert not problems, f"{len(problems)} bad reads, e.g. {problems[:3]}"
    # the reader did read during the rewrites (else the test proves nothing), in order
    assert len(seen) >= 20 and len(set(seen)) >= 5, (len(seen), len(set(seen)))
    assert seen == sorted(seen)
    value, _ = read_json_checked(path)
    assert value["version"] == REWRITES
    # and no temp file is left behind
    assert os.listdir(tmp_path) == ["summary.json"]


def test_a_rewrite_that_fails_half_way_leaves_the_old_file_whole(tmp_path, monkeypatch):
    """A full disk fails the write after the data went out: the old file must stay as it
    was (an in-place write would have truncated it already), and no temp file stays."""
    import errno

    from engine.torchfree import runfolder

    path = tmp_path / "run.json"
    write_json_atomic(path, {"a": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runfolder.os, "fsync", full)
    try:
        write_json_atomic(path, {"a": 2, "pad": "y" * 4096})
    except OSError as e:
        assert e.errno == errno.ENOSPC and str(path) in str(e)  # names the file, not the temp
    else:
        raise AssertionError("the write error was swallowed")
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["run.json"]


def test_the_rename_is_made_durable_the_file_then_its_folder(tmp_path, monkeypatch):
    """fsync the temp file before the rename, the folder after it (else a power cut can
    leave the old name pointing at nothing: the rename lives in the folder's blocks)."""
    import stat

    from engine.torchfree import runfolder

    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        mode = os.fstat(fd).st_mode
        synced.append("folder" if stat.S_ISDIR(mode) else "file")
        return real(fd)

    monkeypatch.setattr(runfolder.os, "fsync", spy)
    write_json_atomic(tmp_path / "summary.json", {"status": "running"})
    assert synced == ["file", "folder"]
