"""The pairs benchmark's own arithmetic: its rules files are ones the pipeline accepts, and its cost blend
counts a quiet window every window and each alert's requests only as often as alerts happen."""

from __future__ import annotations

import json

import pytest

from bench import pairs
from include.price_pipeline import rules, settings


@pytest.mark.parametrize("count", pairs.COUNTS)
def test_the_rules_file_of_each_pair_count_is_one_the_dags_accept(tmp_path, count):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(pairs.rules_document(count)))
    config = settings.load({"PRICE_RULES_FILE": str(path)})

    loaded = settings.load_rules(config)

    assert len(loaded.pairs) == count
    assert all(pair_rules[0].kind == rules.CHANGE for pair_rules in loaded.pairs.values())


def test_a_blended_window_is_the_quiet_one_plus_the_alert_share_of_what_firing_adds():
    quiet = {"s3": {"GetObject": 10, "PutObject": 2}, "glue": {"StartJobRun": 1}}
    firing = {"s3": {"GetObject": 14, "PutObject": 6}, "glue": {"StartJobRun": 1}, "sns": {"Publish": 4}}

    blended = pairs.blended_requests(quiet, firing, share=0.25)

    assert blended == {
        "glue": {"StartJobRun": 1},
        "s3": {"GetObject": 11, "PutObject": 3},
        "sns": {"Publish": 1},
    }


def test_the_alert_share_comes_from_the_real_five_minute_data():
    share = pairs.alert_share()

    assert 0 < share < 0.5
    assert pairs.alert_share(threshold_pct=0.5) > share > pairs.alert_share(threshold_pct=2.0)


def test_a_recording_whose_threads_put_two_requests_on_one_line_is_read_whole():
    """moto's recorder writes an entry and its newline in two calls from many threads: 100 parallel
    Publishes left two entries on one line, and reading a JSON object a line failed the benchmark."""
    from bench.pipeline import recorded_requests

    text = '{"a": 1}\n{"b": 2}{"c": "}{"}\n\n{"d": 4} \n'

    assert list(recorded_requests(text)) == [{"a": 1}, {"b": 2}, {"c": "}{"}, {"d": 4}]


def test_a_window_where_a_tenth_of_the_pairs_fired_counts_each_alert_ten_times_in_the_blend():
    """``--firing``: 100 of 1,000 pairs fired in the recorded window; every pair fires for the alert share."""
    quiet = {"s3": {"PutObject": 2}}
    firing = {"s3": {"PutObject": 6}, "sns": {"Publish": 4}}

    blended = pairs.blended_requests(quiet, firing, share=0.025, scale=10)

    assert blended == {"s3": {"PutObject": 3}, "sns": {"Publish": 1}}
