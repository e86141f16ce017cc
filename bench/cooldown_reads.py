"""Canonical CSV reads per window of a pair with cooldown rules (issue 20): ``python -m bench.cooldown_reads``.

The real Poloniex candles (tests/data/poloniex) as one other pair's ``pairs.csv`` per window in a
counting in-memory S3; every window's analysis reads them through ``store.load_rule_prices`` (the live
task's reads) and the GETs are counted. Prints, per rule, the reads of a quiet window, of a firing one
(median) and the most any window needed, with the bound ``Rule.history`` allows.
"""

from __future__ import annotations

import csv
import statistics
from datetime import UTC, datetime
from types import SimpleNamespace

from include.glue.price_glue import validation
from include.price_pipeline import layout, rules, store
from tests.conftest import POLONIEX_CSV
from tests.records import candle

PAIR = "ETH/BTC"
RULES = {
    "cross-240": {"kind": "crossing", "level": None, "cooldown_minutes": 240},
    "move-5m-cool30": {"kind": "change", "threshold_pct": 0.8, "minutes": 5, "cooldown_minutes": 30},
    "move-24h-cool120": {"kind": "change", "threshold_pct": 5.0, "minutes": 1440, "cooldown_minutes": 120},
}


class CountingS3:
    def __init__(self, objects: dict[str, bytes]):
        self.objects, self.gets = objects, 0

    def get_object(self, Bucket, Key):  # noqa: N803 - boto3's names
        import io

        self.gets += 1
        return {"Body": io.BytesIO(self.objects[Key])}


def main() -> None:
    import json

    with POLONIEX_CSV.open() as handle:
        candles = [
            (datetime.fromtimestamp(int(r["date"]), tz=UTC), float(r["weightedAverage"]))
            for r in csv.DictReader(handle)
        ]
    aliases = json.loads(layout.FIELD_ALIASES_PATH.read_text())
    objects = {}
    for slot, price in candles:
        source = layout.ingestion_key(slot, ".json", pair=PAIR)
        row = validation.normalize(candle(slot, price), aliases, PAIR, source, "json")
        body = validation.to_csv(row)
        objects[layout.analysis_key(slot)] = body.encode() if isinstance(body, str) else body
    median = sorted(p for _, p in candles)[len(candles) // 2]
    slots = [slot for slot, _ in candles]
    config = SimpleNamespace(bucket="bench", analysis_prefix=layout.ANALYSIS_PREFIX)
    for name, spec in RULES.items():
        spec = {"name": name, **spec}
        if spec["kind"] == "crossing":
            spec["level"] = median
        rule_set = rules.parse(
            {
                "default_pair": "ETH/USDT",
                "pairs": {"ETH/USDT": [{"name": "m", "kind": "change", "threshold_pct": 1.0}], PAIR: [spec]},
            }
        )
        rule = rule_set.pairs[PAIR][0]
        s3 = CountingS3(objects)
        quiet, firing, suppressed, worst = [], [], [], 0
        for index, slot in enumerate(slots):
            if slot - slots[0] < rule.history:
                continue  # the file's first days: not a whole look-back
            listed = {
                layout.analysis_key(s)
                for s in slots[max(0, index - rule.history // layout.SLOT - 1) : index + 1]
                if s >= slot - rule.history
            }
            before = s3.gets
            prices = store.load_rule_prices(s3, config.bucket, config.analysis_prefix, rule_set, [PAIR], slot, listed)[
                PAIR
            ]
            reads = s3.gets - before
            decision = rules.evaluate(rule, rules.Series(prices), slot).decision
            (quiet if decision not in (rules.NOTIFY, rules.SUPPRESSED_COOLDOWN) else firing).append(reads)
            if decision == rules.SUPPRESSED_COOLDOWN:
                suppressed.append(reads)
            worst = max(worst, reads)
        print(
            f"{name}: windows {len(quiet) + len(firing)}, quiet {statistics.median(quiet):.0f} reads (median), "
            f"firing {statistics.median(firing):.0f} (median, {len(firing)} windows), suppressed "
            f"{statistics.median(suppressed) if suppressed else 0:.0f} (median), worst {worst}; "
            f"bound {rule.history // layout.SLOT + 1} slots (Rule.history)"
        )


if __name__ == "__main__":
    main()
