"""``make migrate-ledger``: the default pair's ledger entries of before one lane (``layout.ledger_key``, an
object per window) moved into each window's ledger object as the pair's line, once (README "Upgrading from
one ledger object per window"). A claimed line the window holds is kept (but a sent alert replaces a claim);
the old object is deleted only after, and only if unchanged since read. A second run finds nothing to move.
"""

from __future__ import annotations

import json
import logging
import sys

from include.price_pipeline import layout, ledger, settings, store
from include.price_pipeline.analysis import CLAIMED, NOTIFIED, NOTIFY, PUBLISHING

log = logging.getLogger(__name__)
#: Fields of an old entry its rule's state keeps beside the ledger's own: what it was decided with.
KEPT = ("abs_change_pct", "lookback_minutes", "min_abs_move", "repeat_windows", "suppressed_by", ledger.PUBLISH_STARTED)


def entry_from_old(old: dict, slot, pair: str, rule: str) -> dict:
    """The ``ledger.pair_entry`` shape of the old entry of the window of ``slot``, its one rule named ``rule``."""
    decision = str(old.get("decision") or "unknown")
    state = {"kind": "change", "decision": NOTIFY if decision == PUBLISHING else decision, "minutes": 5,
             "level": None, "reference": old.get("previous")}  # fmt: skip
    state |= {field: old.get(field) for field in ("reason", "direction", "change_pct", "threshold_pct")}
    state |= {"sns_message_id": old.get("sns_message_id")} | {f: old[f] for f in KEPT if f in old}
    claim = {"claimed_by": old["claimed_by"]} if decision == PUBLISHING and "claimed_by" in old else {}
    return {"window_start": layout.iso(slot), "window_end": layout.iso(slot + layout.SLOT), "pair": pair,
            "latest": old.get("latest"), "rules": {rule: state},
            "decision": decision if decision in CLAIMED else ledger.ANALYSED} | claim  # fmt: skip


def migrate(s3, config: settings.Config, pair: str, rule: str) -> dict[str, int]:
    """Move every old entry under the ledger prefix, as ``pair``'s rule ``rule``: ``moved``, or ``kept`` (the
    window held a claimed line); ``changed``: written meanwhile, so not deleted (a second run moves it)."""
    prefix, counts = config.changes_prefix, {"moved": 0, "kept": 0, "changed": 0}
    for key in store.list_keys(s3, config.bucket, prefix):
        slot = store.slot_of(key)
        stored = slot and key == layout.ledger_key(slot, prefix) and store.read_with_etag(s3, config.bucket, key)
        if not stored:  # a window's ledger object (or no object of ours), or an old one moved meanwhile
            continue
        try:
            entry = entry_from_old(json.loads(stored[0]), slot, pair, rule)
        except (ValueError, AttributeError) as error:
            raise ValueError(f"{key}: not a ledger entry of the default pair ({error}); fix or delete it") from None
        window = layout.pairs_ledger_key(slot, prefix)

        def change(body: bytes | None, entry=entry, window=window) -> bytes | None:
            entries = ledger.parse_entries(body, window) if body else {}
            held = entries.get(pair, {}).get("decision")  # a claim yields only to a sent alert
            keep = held == NOTIFIED or (held == PUBLISHING and entry["decision"] != NOTIFIED)
            return None if keep else ledger.entries_bytes(entries | {pair: entry})

        wrote = store.update(s3, config.bucket, window, change, store.NDJSON)[1]
        counts["moved" if wrote else "kept"] += 1
        log.info("%s -> %s: %s", key, window, "moved" if wrote else "kept the window's claimed line")
        if (store.read_with_etag(s3, config.bucket, key) or (None, None))[1] == stored[1]:  # unchanged since read
            s3.delete_object(Bucket=config.bucket, Key=key)
        else:  # old code wrote it meanwhile: left for a second run, which moves what it holds now
            counts["changed"] += 1
            log.warning("%s changed while it was moved: not deleted; run the migration again", key)
    return counts


if __name__ == "__main__":
    import boto3

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = settings.load()
    rule_set = settings.load_rules(config)  # the old entries were the default pair's first rule's
    counts = migrate(boto3.client("s3"), config, rule_set.default_pair, rule_set.default_rule.name)
    print(f"s3://{config.bucket}/{config.changes_prefix}: {counts['moved']} entries moved, {counts['kept']} kept, "
          f"{counts['changed']} changed meanwhile (run again)")  # fmt: skip
    sys.exit(1 if counts["changed"] else 0)
