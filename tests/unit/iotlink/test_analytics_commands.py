"""Options of iotlink analytics / formulas / devices (no database)."""

import argparse

import pytest

from iotlink.analytics_commands import day_argument, time_argument
from iotlink.cli import build_parser, main


def test_times_are_iso_8601_utc_by_default_or_epoch_ms():
    assert time_argument("1970-01-01T00:00:01Z") == 1000
    assert time_argument("1970-01-01T00:00:01") == 1000
    assert time_argument("1970-01-01T01:00:00+01:00") == 0
    assert time_argument("1234") == 1234
    with pytest.raises(argparse.ArgumentTypeError, match="ISO 8601"):
        time_argument("yesterday")


def test_days_are_iso_dates():
    assert str(day_argument("2026-03-10")) == "2026-03-10"
    with pytest.raises(argparse.ArgumentTypeError, match="YYYY-MM-DD"):
        day_argument("10.03.2026")


def test_the_commands_parse():
    parser = build_parser()
    args = parser.parse_args(["analytics", "daily", "--from", "2026-03-10", "--to", "2026-03-11"])
    assert (str(args.first_day), str(args.last_day)) == ("2026-03-10", "2026-03-11")
    args = parser.parse_args(["devices", "move", "dev-1", "--site", "s1", "--at", "2026-03-10T12:00:00Z"])
    assert (args.device_id, args.site, args.no_site) == ("dev-1", "s1", False)
    with pytest.raises(SystemExit):
        parser.parse_args(["devices", "move", "dev-1", "--site", "s1", "--no-site"])


def test_check_reports_problems_without_a_database(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("formulas:\n  - id: a\n    expression: x_avg * 2\n")
    assert main(["formulas", "check", str(good)]) == 0
    assert "1 formula OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("formulas:\n  - id: a\n    expression: x_avg *\n")
    assert main(["formulas", "check", str(bad)]) == 1
    assert f"{bad}:3: formulas[0].expression:" in capsys.readouterr().err


def test_to_needs_from(capsys):
    assert main(["analytics", "daily", "--to", "2026-03-10", "--postgres-url", "postgresql://u@127.0.0.1:1/db"]) == 2
    assert "--to needs --from" in capsys.readouterr().err
