from operators.rule_errors import RuleErrorDigest

T = 1_796_000_000_000


def test_first_error_is_due_at_once_with_its_message_and_product():
    digest = RuleErrorDigest(subtask=1)
    digest.add("product_a", "3", "rule r1: division by zero", T)
    [status] = digest.due(T)
    assert status == {
        "status": "errors", "product_id": "product_a", "version": "3", "subtask": 1, "since": T, "until": T, "count": 1,
        "errors": [{"message": "rule r1: division by zero", "count": 1}], "other": 0,
    }
    assert digest.due(T + 1) == []


def test_errors_within_the_interval_wait_and_are_summed_most_frequent_first():
    digest = RuleErrorDigest(interval_ms=60_000)
    digest.add("p", "1", "rule a: x", T)
    assert len(digest.due(T)) == 1
    for i in range(5):
        digest.add("p", "1", "rule b: y", T + 1_000 + i)
    digest.add("p", "2", "rule a: x", T + 2_000)
    assert digest.due(T + 59_999) == []
    [status] = digest.due(T + 60_000)
    assert status["count"] == 6 and status["version"] == "2"
    assert status["since"] == T + 1_000 and status["until"] == T + 2_000
    assert status["errors"] == [{"message": "rule b: y", "count": 5}, {"message": "rule a: x", "count": 1}]


def test_products_have_their_own_digests():
    digest = RuleErrorDigest()
    digest.add("p", "1", "rule a: x", T)
    digest.add("q", "1", "rule a: x", T)
    digest.add(None, None, "engine: KeyError", T)
    assert sorted((s["product_id"] or "") for s in digest.due(T)) == ["", "p", "q"]


def test_distinct_messages_are_bounded_and_the_rest_counted():
    digest = RuleErrorDigest(max_messages=3)
    for i in range(10):
        digest.add("p", "1", f"rule r{i}: bad", T)
    digest.add("p", "1", "rule r0: bad", T)
    [status] = digest.due(T)
    assert len(status["errors"]) == 3 and status["other"] == 7 and status["count"] == 11
    assert status["errors"][0] == {"message": "rule r0: bad", "count": 2}


def test_nothing_due_without_errors():
    assert RuleErrorDigest().due(T) == []
