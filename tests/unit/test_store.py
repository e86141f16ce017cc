"""store.update: the one retry loop of the ledger's conditional writes (the pairs' objects, the bulk DAG's
ledger pass)."""

from __future__ import annotations

import pytest

from include.price_pipeline import store
from tests.unit.test_history import MemoryS3

BUCKET, KEY = "bucket", "crypto/03-price-changes/k.jsonl"


class Counting(MemoryS3):
    """MemoryS3 counting its reads (its ``puts`` lists the keys written)."""

    def __init__(self, objects=None):
        super().__init__(objects)
        self.gets = 0

    def get_object(self, **kwargs):
        self.gets += 1
        return super().get_object(**kwargs)


def append(line: bytes):
    return lambda body: (body or b"") + line


def test_a_change_that_lost_to_another_writer_is_asked_again_over_the_version_that_won():
    s3 = Counting({KEY: b"a\n"})
    seen = []

    def change(body):
        seen.append(body)
        if len(seen) == 1:  # another writer lands between our read and our write
            s3.objects[KEY] = b"a\nother\n"
        return body + b"ours\n"

    held, wrote = store.update(s3, BUCKET, KEY, change, store.NDJSON)

    assert seen == [b"a\n", b"a\nother\n"]
    assert (held, wrote) == (b"a\nother\nours\n", True)
    assert s3.objects[KEY] == b"a\nother\nours\n"  # nobody's write is lost


def test_a_first_write_creates_the_object_unread_and_reads_only_when_it_loses():
    s3 = Counting()

    assert store.update(s3, BUCKET, KEY, append(b"x\n"), store.NDJSON, read_first=False) == (b"x\n", True)
    assert (s3.gets, len(s3.puts)) == (0, 1)

    held, wrote = store.update(s3, BUCKET, KEY, append(b"y\n"), store.NDJSON, read_first=False)

    assert (held, wrote) == (b"x\ny\n", True)  # If-None-Match lost: read, asked again, If-Match won
    assert (s3.gets, len(s3.puts)) == (1, 2)


@pytest.mark.parametrize("change", [lambda body: body, lambda body: None], ids=["same-bytes", "none"])
def test_a_change_that_keeps_the_object_writes_nothing_and_returns_what_is_there(change):
    s3 = Counting({KEY: b"kept\n"})

    assert store.update(s3, BUCKET, KEY, change, store.NDJSON) == (b"kept\n", False)
    assert s3.puts == []


def test_an_object_that_keeps_changing_is_not_written_and_says_so():
    s3 = Counting({KEY: b"0\n"})

    def change(body):
        s3.objects[KEY] = body + b"+\n"  # someone always writes first
        return body + b"ours\n"

    with pytest.raises(RuntimeError, match=f"{KEY} kept changing while being written .20 attempts.: not written"):
        store.update(s3, BUCKET, KEY, change, store.NDJSON)
    assert b"ours" not in s3.objects[KEY]
