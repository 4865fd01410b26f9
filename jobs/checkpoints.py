"""The job's retained checkpoints in a local checkpoint directory."""

from __future__ import annotations

from pathlib import Path

LATEST = "latest"  # ``--restore latest``: the newest completed checkpoint of the checkpoint directory


def newest_checkpoint(checkpoint_dir: Path) -> Path:
    """The newest completed checkpoint under ``checkpoint_dir`` (``<job-id>/chk-N`` whose
    ``_metadata`` is written, the last thing Flink writes of a checkpoint), of whichever job
    wrote last. Newest by the time of its metadata, not by number: a job started afresh numbers
    its checkpoints from 1 again, and a directory without metadata is a checkpoint the job did
    not finish (it was killed meanwhile).

    Args:
        checkpoint_dir: A local checkpoint directory (``execution.checkpointing.dir``).

    Raises:
        ValueError: no completed checkpoint there.
    """
    found = []
    for metadata in Path(checkpoint_dir).glob("*/chk-*/_metadata"):
        try:
            found.append((metadata.stat().st_mtime_ns, int(metadata.parent.name.removeprefix("chk-")), metadata.parent))
        except (OSError, ValueError):  # removed meanwhile (a running job keeps only the newest), or not Flink's
            continue
    if not found:
        raise ValueError(f"--restore {LATEST}: no completed checkpoint under {checkpoint_dir}")
    return max(found)[2]
