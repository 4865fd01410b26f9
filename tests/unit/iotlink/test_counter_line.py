"""The demo's status line: its rate survives the REST API's metric refresh interval."""

from iotlink.live import CounterLine


def counters(records_in):
    return {"records_in": records_in, "decoded": records_in, "dlq": 0, "duplicates": 0, "late": 0, "alarms": 0}


def rate_of(line: str) -> float:
    return float(line.split("rec/s")[0].split()[-1])


def test_the_rate_is_kept_while_the_counters_have_not_been_refreshed():
    line = CounterLine(started=0.0)
    assert rate_of(line.render(counters(0), 0, now=0.0)) == 0
    assert rate_of(line.render(counters(1_000), 1, now=2.0)) == 500
    # the REST API has not refreshed the metric since: the same reading, the same rate
    assert rate_of(line.render(counters(1_000), 1, now=4.0)) == 500
    # refreshed after 6 s in all: 1,800 more records over the 4 s since the last change
    assert rate_of(line.render(counters(2_800), 2, now=6.0)) == 450


def test_a_reading_that_stands_still_long_enough_means_no_records():
    line = CounterLine(started=0.0, idle_after_s=12.0)
    line.render(counters(0), 0, now=0.0)
    assert rate_of(line.render(counters(600), 1, now=2.0)) == 300
    assert rate_of(line.render(counters(600), 1, now=10.0)) == 300
    assert rate_of(line.render(counters(600), 1, now=14.0)) == 0
    text = line.render(counters(600), 1, sent=700, now=16.0)
    assert text.startswith("[    16s]  sent      700  in      600") and text.endswith("checkpoints 1")


def test_rule_errors_show_only_when_there_are_some_and_say_where_to_look():
    line = CounterLine(started=0.0)
    assert "rule errors" not in line.render(counters(10), 0, now=0.0)
    text = line.render({**counters(20), "rule_errors": 3}, 0, now=1.0)
    assert "rule errors 3 (iotlink rules status)" in text
