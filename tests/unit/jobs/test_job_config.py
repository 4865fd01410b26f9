import argparse

import pytest

from jobs.config import Settings
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
    # Flink's REST API reports savepoint locations as file:/… URIs (one slash).
    conf = flink_configuration(Settings(data_dir=tmp_path), RunOptions(restore_from="file:/tmp/sp/savepoint-1"))
    assert conf["execution.state-recovery.path"] == "file:/tmp/sp/savepoint-1"


def test_rocksdb_logs_only_warnings(tmp_path):
    conf = flink_configuration(Settings(data_dir=tmp_path), RunOptions())
    assert conf["state.backend.rocksdb.log.level"] == "WARN_LEVEL"
    assert "state.backend.rocksdb.log.dir" not in conf


def test_restarts_back_off_without_a_limit_unless_one_is_set(tmp_path):
    conf = flink_configuration(Settings(data_dir=tmp_path), RunOptions())
    assert conf["restart-strategy.type"] == "exponential-delay"
    assert "restart-strategy.exponential-delay.attempts-before-reset-backoff" not in conf
    conf = flink_configuration(Settings(data_dir=tmp_path, flink={"restart_attempts": 10}), RunOptions())
    assert conf["restart-strategy.exponential-delay.attempts-before-reset-backoff"] == "10"


def test_restore_latest_is_the_newest_completed_checkpoint(tmp_path):
    done = tmp_path / "checkpoints" / "job-a" / "chk-7"
    done.mkdir(parents=True)
    (done / "_metadata").write_bytes(b"\0")
    (tmp_path / "checkpoints" / "job-a" / "chk-8").mkdir()  # not finished
    conf = flink_configuration(Settings(data_dir=tmp_path), RunOptions(restore_from="latest"))
    assert conf["execution.state-recovery.path"] == done.resolve().as_uri()
    with pytest.raises(ValueError, match="no completed checkpoint"):
        flink_configuration(Settings(data_dir=tmp_path / "elsewhere"), RunOptions(restore_from="latest"))


def test_job_process_gets_the_endpoints_in_its_environment(tmp_path):
    from iotlink.job_process import job_environment

    settings = Settings(data_dir=tmp_path, postgres_url="postgresql://u:secret@db/iotlink", iceberg_catalog="sqlite:///c.db")
    env = job_environment(settings, {"PATH": "/bin", "PYTHONPATH": "/x"})
    assert env["IOTLINK_POSTGRES_URL"] == "postgresql://u:secret@db/iotlink"
    assert env["IOTLINK_ICEBERG_CATALOG"] == "sqlite:///c.db"
    assert "IOTLINK_ICEBERG_WAREHOUSE" not in env and env["PATH"] == "/bin"
    assert env["PYTHONPATH"].endswith(":/x")


def test_input_files_make_a_batch_run():
    parser = argparse.ArgumentParser()
    add_job_arguments(parser)
    options = options_from_args(parser.parse_args(["--input", "a.jsonl", "b.jsonl"]))
    assert options.input_files == ("a.jsonl", "b.jsonl")


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


def test_demo_registry_gives_every_simulated_device_its_product_and_interval(tmp_path):
    from iotlink.cli import write_fleet_registry
    from iotlink.simulator import build_fleet
    from operators.spec_loading import load_device_registry_file

    args = argparse.Namespace(devices=12, forms="json,hex,csv", profile="normal=90,late=10", seed=3, rate=24.0)
    registry = load_device_registry_file(write_fleet_registry(args, tmp_path / "devices.yaml"))
    fleet = build_fleet(12, ("json", "hex", "csv"), {"normal": 90, "late": 10}, 3)
    assert {d: (i.product_id, i.expected_interval_s) for d, i in registry.items()} == {d.device_id: (d.product_id, 0.5) for d in fleet}
