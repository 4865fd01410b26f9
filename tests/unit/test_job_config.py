import argparse

import pytest

from iotlink.config import Settings
from jobs.telemetry_job import RunOptions, add_job_arguments, flink_configuration, options_from_args, parse_offsets


def test_exactly_once_checkpointing_on_rocksdb_with_file_dir(tmp_path):
    conf = flink_configuration(Settings(data_dir=tmp_path), RunOptions())
    assert conf["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert conf["state.backend.type"] == "rocksdb"
    assert conf["execution.checkpointing.dir"] == (tmp_path.resolve() / "checkpoints").as_uri()
    assert conf["execution.checkpointing.externalized-checkpoint-retention"] == "RETAIN_ON_CANCELLATION"
    assert "execution.state-recovery.path" not in conf


def test_restore_path_is_passed_to_flink(tmp_path):
    conf = flink_configuration(Settings(data_dir=tmp_path), RunOptions(restore_from=str(tmp_path / "chk-3")))
    assert conf["execution.state-recovery.path"] == (tmp_path / "chk-3").as_uri()
    conf = flink_configuration(Settings(data_dir=tmp_path), RunOptions(restore_from="s3://b/savepoint-1"))
    assert conf["execution.state-recovery.path"] == "s3://b/savepoint-1"


def test_offsets_parsing():
    assert parse_offsets("0=10, 1=20") == {0: 10, 1: 20}
    assert parse_offsets(None) is None
    with pytest.raises(ValueError, match="'x'"):
        parse_offsets("x")


def test_job_arguments():
    parser = argparse.ArgumentParser()
    add_job_arguments(parser)
    options = options_from_args(parser.parse_args(["--stop-offsets", "0=5", "--restore", "/c/chk-1"]))
    assert options.stop_offsets == {0: 5} and options.restore_from == "/c/chk-1"
