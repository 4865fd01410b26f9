import os

import pytest

from jobs.checkpoints import newest_checkpoint


def checkpoint(root, job, n, mtime=None, complete=True):
    directory = root / job / f"chk-{n}"
    directory.mkdir(parents=True)
    if complete:
        metadata = directory / "_metadata"
        metadata.write_bytes(b"\0")
        if mtime is not None:
            os.utime(metadata, (mtime, mtime))
    return directory


def test_the_newest_completed_checkpoint_of_whichever_job_wrote_last(tmp_path):
    checkpoint(tmp_path, "old-job", 42, mtime=1_000)
    newest = checkpoint(tmp_path, "new-job", 3, mtime=2_000)  # a job started afresh numbers from 1 again
    checkpoint(tmp_path, "new-job", 4, complete=False)  # killed while writing it
    (tmp_path / "new-job" / "shared").mkdir()
    assert newest_checkpoint(tmp_path) == newest


def test_no_completed_checkpoint_is_an_error(tmp_path):
    checkpoint(tmp_path, "job", 1, complete=False)
    with pytest.raises(ValueError, match="no completed checkpoint"):
        newest_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="no completed checkpoint"):
        newest_checkpoint(tmp_path / "missing")
