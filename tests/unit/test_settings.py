"""Deployment settings: defaults, typed environment overrides, the Glue job's arguments, the README."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import jsonschema
import pytest

from include.glue.price_glue import job
from include.price_pipeline import layout, rules, settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TYPES = {field.name: field.type for field in fields(settings.Config)}


def attribute(setting: settings.Setting) -> str:
    """The Config attribute of a ``PRICE_*`` variable."""
    return setting.env.removeprefix("PRICE_").lower()


# ------------------------------------------------------------------ the settings table


def test_every_setting_is_a_config_attribute_and_every_attribute_a_setting():
    assert len(settings.SETTINGS) == len(fields(settings.Config))
    assert {attribute(s) for s in settings.SETTINGS} == {f.name for f in fields(settings.Config)}


def test_setting_names_are_unique_price_variables_with_a_description():
    names = [s.env for s in settings.SETTINGS]

    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"PRICE_[A-Z0-9_]+", name) for name in names)
    assert all(s.doc.strip() for s in settings.SETTINGS)


# ------------------------------------------------------------------ load()


def _expected_default(setting: settings.Setting):
    kind = TYPES[attribute(setting)]
    if kind == "bool":
        return {"true": True, "false": False}[setting.default]
    return {"float": float, "int": int}.get(kind, str)(setting.default)


@pytest.mark.parametrize("setting", settings.SETTINGS, ids=lambda s: s.env)
def test_load_without_environment_gives_each_setting_default_with_its_type(setting):
    value = getattr(settings.load({}), attribute(setting))

    assert value == _expected_default(setting)
    assert type(value).__name__ == TYPES[attribute(setting)]


def test_documented_defaults_match_the_local_stand_in_and_the_layout():
    config = settings.load({})

    assert config.bucket == "price-notification-local"
    assert config.ingestion_prefix == layout.INGESTION_PREFIX
    assert config.analysis_prefix == layout.ANALYSIS_PREFIX
    assert config.alert_topic_arn == "arn:aws:sns:us-east-1:123456789012:price-alerts"
    assert config.deferrable is True


def test_load_reads_os_environ_when_given_no_mapping(monkeypatch):
    monkeypatch.setenv("PRICE_BUCKET", "bucket-from-env")
    monkeypatch.setenv("PRICE_MAX_ALERT_AGE_MINUTES", "42")

    config = settings.load()

    assert config.bucket == "bucket-from-env"
    assert config.max_alert_age_minutes == 42


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        ("PRICE_SENSOR_TIMEOUT_SECONDS", " 120 ", 120),
        ("PRICE_MAX_OBJECT_BYTES", "2048", 2048),
        ("PRICE_BUCKET", "my-bucket", "my-bucket"),
    ],
)
def test_an_environment_value_overrides_the_default_with_the_setting_type(variable, raw, expected):
    value = getattr(settings.load({variable: raw}), variable.removeprefix("PRICE_").lower())

    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(r, True) for r in ("true", "1", "yes", "on", "TRUE", " On ")]
    + [(r, False) for r in ("false", "0", "no", "off", "False", " OFF ")],
)
def test_boolean_settings_accept_the_usual_spellings(raw, expected):
    assert settings.load({"PRICE_DEFERRABLE": raw}).deferrable is expected


def test_an_override_changes_only_its_own_setting():
    default, changed = settings.load({}), settings.load({"PRICE_SENSOR_POKE_SECONDS": "15", "UNRELATED": "x"})

    assert changed.sensor_poke_seconds == 15
    assert {f.name: getattr(changed, f.name) for f in fields(settings.Config) if f.name != "sensor_poke_seconds"} == {
        f.name: getattr(default, f.name) for f in fields(settings.Config) if f.name != "sensor_poke_seconds"
    }


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("PRICE_SENSOR_TIMEOUT_SECONDS", "1.5"),
        ("PRICE_SENSOR_POKE_SECONDS", "20s"),
        ("PRICE_MAX_OBJECT_BYTES", ""),
        ("PRICE_DEFERRABLE", "maybe"),
        ("PRICE_DEFERRABLE", ""),
    ],
)
def test_an_invalid_value_raises_value_error_naming_the_variable_and_value(variable, raw):
    with pytest.raises(ValueError, match=re.escape(f"{variable}={raw!r}")):
        settings.load({variable: raw})


# ------------------------------------------------------------------ glue_job_arguments


def test_glue_job_arguments_are_all_strings_under_double_dash_names():
    arguments = settings.glue_job_arguments(settings.load({}))

    assert arguments
    assert all(name.startswith("--") for name in arguments)
    assert all(type(value) is str for value in arguments.values())


def test_glue_job_field_aliases_are_the_alias_file_as_compact_json():
    value = settings.glue_job_arguments(settings.load({}))["--field_aliases"]

    assert json.loads(value) == json.loads(layout.FIELD_ALIASES_PATH.read_text())
    outside_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', value)
    assert not re.search(r"\s", outside_strings), "whitespace between JSON tokens"


def test_glue_job_arguments_follow_the_configuration():
    config = settings.load(
        {
            "PRICE_BUCKET": "other-bucket",
            "PRICE_INGESTION_PREFIX": "in/",
            "PRICE_ANALYSIS_PREFIX": "out/",
            "PRICE_QUARANTINE_PREFIX": "bad/",
            "PRICE_MAX_OBJECT_BYTES": "4096",
        }
    )

    arguments = settings.glue_job_arguments(config)

    assert {name: value for name, value in arguments.items() if name != "--field_aliases"} == {
        "--bucket": "other-bucket",
        "--ingestion_prefix": "in/",
        "--analysis_prefix": "out/",
        "--quarantine_prefix": "bad/",
        "--pairs": "ETH/USDT",  # every pair of the rules file, its default pair first
        "--max_object_bytes": "4096",
    }


def test_the_glue_jobs_pairs_are_every_pair_of_the_rules_file_its_default_pair_first():
    """One --pairs list, one write path for every pair (there was a --pair of the default pair's own)."""
    local = settings.load({"PRICE_RULES_FILE": "include/rules/local.json"})
    assert settings.glue_job_arguments(local)["--pairs"] == "ETH/USDT,BTC/USDT,SOL/USDT"
    assert settings.glue_job_arguments(settings.load({}))["--pairs"] == "ETH/USDT"
    assert "--pair" not in settings.glue_job_arguments(local)
    assert settings.load_rules(local).default_pair == "ETH/USDT"


def test_the_glue_job_parses_every_argument_the_dag_passes_it():
    config = settings.load({"PRICE_BUCKET": "other-bucket", "PRICE_MAX_OBJECT_BYTES": "4096"})
    arguments = settings.glue_job_arguments(config)
    argv = [part for name, value in arguments.items() for part in (name, value)]

    args = job.parse_args([*argv, "--window_start", "2026-02-03T12:00:00Z"])

    for name, value in arguments.items():
        parsed = getattr(args, name.removeprefix("--"))
        assert (",".join(parsed) if isinstance(parsed, list) else str(parsed)) == value, name
    assert args.max_object_bytes == 4096
    assert args.aliases == json.loads(layout.FIELD_ALIASES_PATH.read_text())


# ------------------------------------------------------------------ README


def test_readme_lists_every_price_setting():
    if not README.exists():
        pytest.fail(f"{README} does not exist yet: it must document every PRICE_* setting")
    text = README.read_text()

    missing = [s.env for s in settings.SETTINGS if not re.search(rf"\b{s.env}\b", text)]

    assert missing == [], f"README.md does not mention {missing}"


def test_the_default_pairs_rule_is_the_files_whatever_its_threshold_cooldown_or_min_abs_move(tmp_path):
    """The rules file is the one home of every rule: the DAG params name the default pair, and each number
    left empty is the named rule's own (they used to default to PRICE_THRESHOLD_PCT / PRICE_LOOKBACK_MINUTES,
    which the file had to repeat; then to the default pair's one rule, which a run naming another rule would
    have carried over to it)."""
    doc = json.loads((ROOT / settings.load({}).rules_file).read_text())
    doc["pairs"]["ETH/USDT"][0] |= {"threshold_pct": 2.0, "tolerance_minutes": 25, "min_abs_move": 3.0,
                                    "cooldown_minutes": 30}  # fmt: skip
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(doc))

    rule_set = settings.load_rules(settings.load({"PRICE_RULES_FILE": str(path)}))

    params = {name: spec["default"] for name, spec in settings.policy_params(rule_set).items()}
    assert params == {"pair": "ETH/USDT", "rule": None, "threshold_pct": None, "lookback_minutes": None,
                      "min_abs_move": None, "repeat_windows": None, "notify_on_backfill": False}  # fmt: skip
    rule = rules.with_overrides(rule_set, params).default_rule
    assert (rule.threshold_pct, rule.tolerance_minutes, rule.min_abs_move, rule.cooldown_minutes) == (2.0, 25, 3.0, 30)


def test_every_numeric_param_is_bounded_by_what_a_rule_can_hold():
    """Issue 35: ``lookback_minutes: 10**13`` in a REST trigger's conf crashed analyse_pairs with OverflowError;
    the params' schema (what Airflow checks a conf against) now refuses it. A rule at the rules file's bounds
    is a valid default, and a run with every param at its maximum has a look-back it can compute."""
    bounds = {"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [
        {"name": "m", "kind": "change", "threshold_pct": rules.MAX_THRESHOLD_PCT, "minutes": 5,
         "tolerance_minutes": rules.MAX_MINUTES, "min_abs_move": rules.MAX_PRICE,
         "cooldown_minutes": rules.MAX_COOLDOWN_MINUTES}]}}  # fmt: skip
    rule_set = rules.parse(bounds)
    specs = settings.policy_params(rule_set)
    for spec in specs.values():
        schema = {key: value for key, value in spec.items() if key not in ("default", "description")}
        jsonschema.validate(spec["default"], schema)
        if "maximum" in spec:
            for huge in (spec["maximum"] * 2, 10**400):
                with pytest.raises(jsonschema.ValidationError, match="is greater than the maximum"):
                    jsonschema.validate(huge, schema)
    largest = {name: spec.get("maximum", spec["default"]) for name, spec in specs.items()}
    assert rules.with_overrides(rule_set, largest).history() == rule_set.history()


def test_the_default_pair_takes_any_rules_as_every_pair_does(tmp_path):
    """It used to take one 5-minute change rule only (its own storage, and the one rule the DAG params
    overrode): ETH/USDT watched with three rules was refused."""
    doc = json.loads((ROOT / settings.load({}).rules_file).read_text())
    doc["pairs"]["ETH/USDT"] += [
        {"name": "move-1h", "kind": "change", "threshold_pct": 3.0, "minutes": 60, "tolerance_minutes": 10},
        {"name": "above-3000", "kind": "crossing", "level": 3000.0, "direction": "up"},
    ]
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(doc))

    loaded = settings.load_rules(settings.load({"PRICE_RULES_FILE": str(path)}))

    assert [rule.name for rule in loaded.pairs["ETH/USDT"]] == ["move-5m", "move-1h", "above-3000"]


@pytest.mark.parametrize("variable", ["PRICE_THRESHOLD_PCT", "PRICE_LOOKBACK_MINUTES", "PRICE_PAIR"])
def test_a_retired_setting_fails_loudly_naming_where_the_value_lives_now(variable):
    with pytest.raises(ValueError, match=f"{variable} is no longer a setting: .*the rules file"):
        settings.load({variable: "2"})
