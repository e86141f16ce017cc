"""A sorted index of each bucket's key names, so the stand-in lists an S3 prefix in time proportional
to what the listing returns, as S3 does, instead of moto's time proportional to the whole bucket.

moto 5.2.5's ``S3Backend.list_objects`` (and ``list_objects_v2``, which calls it) visits every key of the
bucket for every ListObjects call: it tests each name against the prefix, splits out the common prefixes,
sorts everything, and only then applies the marker, start-after or continuation token and MaxKeys. A
sensor poking one day's prefix (288 keys) in a bucket that has accumulated months of objects pays for
every one of them, on every poke and every page.

:class:`S3ListingIndex` keeps moto's answers and changes only what moto looks at:

* every bucket's key store is an :class:`IndexedKeyStore`, moto's own ``_VersionedKeyStore`` plus a
  sorted list of its key names, kept with :mod:`bisect` whenever a name appears or disappears (PutObject,
  CopyObject, CompleteMultipartUpload, DeleteObject(s), delete markers: every moto write goes through
  ``__setitem__``, ``setlist`` or ``pop``). A new version of an existing name does not touch the list;
* a listing walks that list from the first name at or after the prefix (or after the marker, start-after
  or continuation token), jumps over each common prefix in one bisection, and stops as soon as it has one
  entry more than MaxKeys, or at the first name outside the prefix;
* the keys it walked are handed, as a bucket of their own, to moto's own ``list_objects`` /
  ``list_objects_v2``, which build the answer (sorting, delete markers, folders, truncation and the
  continuation token it remembers) exactly as they would have from the whole bucket.

One moto quirk is kept and costs a full walk of the prefix: ListObjects (v1) with a delimiter returns
every common prefix under the prefix on every page, whatever the marker, so that call walks all the
prefix's entries (still never the rest of the bucket). Anything the walk cannot reproduce exactly (a
negative MaxKeys, a continuation token moto does not know, a non-indexed bucket) goes to moto unchanged.
"""

from __future__ import annotations

import bisect
import http.client
import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

from moto.s3 import models as s3_models
from moto.s3.utils import _VersionedKeyStore

MAX_CHAR = 0x10FFFF


def successor(name: str) -> str | None:
    """The smallest string greater than every string that starts with ``name`` (None: there is none)."""
    for i in range(len(name) - 1, -1, -1):
        if ord(name[i]) < MAX_CHAR:
            return name[:i] + chr(ord(name[i]) + 1)
    return None


class IndexedKeyStore(_VersionedKeyStore):
    """moto's versioned key store with a sorted list of its key names, updated on every write.

    ``examined`` counts the names listings have walked (tests and the stand-in's stats read it).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lock = threading.RLock()  # moto's server answers each request in a thread of its own
        self.names: list[str] = sorted(dict.keys(self))
        self.examined = 0

    # ---------------------------------------------------------------- writes (every path moto uses)

    def __setitem__(self, key: str, value: Any) -> None:
        with self.lock:
            new = not dict.__contains__(self, key)
            super().__setitem__(key, value)
            if new:
                bisect.insort(self.names, key)

    def setlist(self, key: Any, list_: Any) -> None:
        with self.lock:
            new = not dict.__contains__(self, key)
            super().setlist(key, list_)
            if new:
                bisect.insort(self.names, key)

    def pop(self, key: str) -> None:  # type: ignore[override]
        with self.lock:
            super().pop(key)  # KeyError, as moto's, when absent
            self._forget(key)

    def __delitem__(self, key: str) -> None:
        with self.lock:
            super().__delitem__(key)
            self._forget(key)

    def clear(self) -> None:
        with self.lock:
            super().clear()
            self.names.clear()

    # moto never calls these; they keep the index right if something does.
    def update(self, *args: Any, **kwargs: Any) -> None:
        with self.lock:
            dict.update(self, *args, **kwargs)
            self.names = sorted(dict.keys(self))

    def setdefault(self, key: str, default: Any = None) -> Any:
        with self.lock:
            value = dict.setdefault(self, key, default)
            self.names = sorted(dict.keys(self))
            return value

    def popitem(self) -> tuple[str, Any]:
        with self.lock:
            item = dict.popitem(self)
            self._forget(item[0])
            return item

    def _forget(self, key: str) -> None:
        at = bisect.bisect_left(self.names, key)
        if at < len(self.names) and self.names[at] == key:
            del self.names[at]

    # ---------------------------------------------------------------- the walk

    def entries(self, prefix: str, delimiter: str | None, after: str | None) -> Iterator[tuple[str, str, bool]]:
        """``(entry, key name, is_folder)`` in listing order: the keys under ``prefix`` and, with a
        delimiter, one key per common prefix (``entry`` is then the common prefix), starting at the first
        key after ``after``. A common prefix that holds ``after`` comes first even though it sorts before.

        Call with ``lock`` held and consume before releasing it.
        """
        names = self.names
        i = bisect.bisect_left(names, prefix)
        if after is not None:
            i = max(i, bisect.bisect_right(names, after))
        start = len(prefix)
        while i < len(names):
            name = names[i]
            if not name.startswith(prefix):
                return
            self.examined += 1
            cut = name.find(delimiter, start) if delimiter else -1
            if cut < 0:
                yield name, name, False
                i += 1
                continue
            folder = name[: cut + len(delimiter)]  # moto: prefix + rest.split(delimiter)[0] + delimiter
            yield folder, name, True
            beyond = successor(folder)
            if beyond is None:
                return
            i = bisect.bisect_left(names, beyond, i + 1)


class _Walked:
    """A stand-in bucket for moto's listing code: only the keys the walk picked (it reads ``keys.items()``)."""

    def __init__(self, store: IndexedKeyStore, names: list[str]):
        self.keys = {name: store[name] for name in names}


class S3ListingIndex:
    """Patches moto's S3 backend so ListObjects/ListObjectsV2 read only the keys their answer needs.

    Every bucket created while installed gets an :class:`IndexedKeyStore`; ``list_objects`` and
    ``list_objects_v2`` pick, from its sorted names, the keys that can appear in the page (see the module
    docstring) and let moto's own methods answer from those. ``install`` / ``uninstall`` (or ``with``).
    """

    def __init__(self) -> None:
        self.originals: dict[str, Any] = {}

    def __enter__(self) -> S3ListingIndex:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def install(self) -> None:
        if self.originals:
            return
        backend, bucket = s3_models.S3Backend, s3_models.FakeBucket
        self.originals = {
            "bucket_init": bucket.__init__,
            "list_objects": backend.list_objects,
            "list_objects_v2": backend.list_objects_v2,
        }
        original_init = self.originals["bucket_init"]
        index = self

        def bucket_init(bucket_, *args: Any, **kwargs: Any) -> None:
            original_init(bucket_, *args, **kwargs)
            bucket_.keys = IndexedKeyStore()

        # moto's own parameter names: its responses pass them by keyword.
        def list_objects(self_, bucket, prefix, delimiter, marker, max_keys):
            return index.list_objects(self_, bucket, prefix, delimiter, marker, max_keys)

        def list_objects_v2(self_, bucket, prefix, delimiter, continuation_token, start_after, max_keys):
            return index.list_objects_v2(self_, bucket, prefix, delimiter, continuation_token, start_after, max_keys)

        bucket.__init__ = bucket_init
        backend.list_objects = list_objects
        backend.list_objects_v2 = list_objects_v2

    def uninstall(self) -> None:
        """Give moto back its own methods (buckets made meanwhile keep their index; moto can read it)."""
        if not self.originals:
            return
        s3_models.FakeBucket.__init__ = self.originals["bucket_init"]
        s3_models.S3Backend.list_objects = self.originals["list_objects"]
        s3_models.S3Backend.list_objects_v2 = self.originals["list_objects_v2"]
        self.originals = {}

    @staticmethod
    def _indexed(bucket: Any) -> IndexedKeyStore | None:
        store = getattr(bucket, "keys", None)
        if isinstance(store, IndexedKeyStore) and not isinstance(bucket, s3_models.FakeTableStorageBucket):
            return store
        return None

    def list_objects(self, backend, bucket, prefix, delimiter, marker, max_keys):
        """ListObjects (v1): moto filters only keys by the marker and returns every common prefix."""
        original = self.originals["list_objects"]
        store = self._indexed(bucket)
        if store is None or not _plain(prefix, delimiter, marker) or (max_keys is not None and max_keys < 0):
            return original(backend, bucket, prefix, delimiter, marker, max_keys)
        after = (backend._pagination_tokens.get(marker) or marker) if marker else None
        wanted = None if max_keys is None else max_keys + 1
        picked, keys = [], 0
        with store.lock:
            # Every common prefix is in every page, so a delimiter walks the whole prefix.
            for entry, name, is_folder in store.entries(prefix or "", delimiter, None if delimiter else after):
                if is_folder:
                    picked.append(name)
                elif (wanted is None or keys < wanted) and (after is None or entry > after):
                    picked.append(name)
                    keys += not isinstance(store[name], s3_models.FakeDeleteMarker)
                elif not delimiter:
                    break
            walked = _Walked(store, picked)
        return original(backend, walked, prefix, delimiter, marker, max_keys)

    def list_objects_v2(self, backend, bucket, prefix, delimiter, continuation_token, start_after, max_keys):
        """ListObjectsV2: keys and common prefixes after the token, MaxKeys of them and one to see more."""
        original = self.originals["list_objects_v2"]
        store = self._indexed(bucket)
        after = None
        if continuation_token or start_after:
            after = backend._pagination_tokens.get(continuation_token) if continuation_token else start_after
        if (
            store is None
            or not _plain(prefix, delimiter, after)
            or max_keys < 0
            or ((continuation_token or start_after) and after is None)
        ):
            return original(backend, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
        picked, count = [], 0
        with store.lock:
            for entry, name, is_folder in store.entries(prefix or "", delimiter, after):
                if after is not None and entry <= after:
                    continue  # the common prefix holding ``after``: before the page
                picked.append(name)
                count += is_folder or not isinstance(store[name], s3_models.FakeDeleteMarker)
                if count > max_keys:
                    break
            walked = _Walked(store, picked)
        return original(backend, walked, prefix, delimiter, continuation_token, start_after, max_keys)


STATS_PATH = "/_standin/s3-index"


def stats() -> dict[str, dict[str, int]]:
    """Per indexed bucket of this process: its key names and how many of them listings have walked."""
    out = {}
    for regions in list(s3_models.s3_backends.values()):
        for backend in list(regions.values()):
            for name, bucket in list(backend.buckets.items()):
                if isinstance(bucket.keys, IndexedKeyStore):
                    out[name] = {"keys": len(bucket.keys.names), "examined": bucket.keys.examined}
    return out


class StatsPath:
    """WSGI app in front of moto answering ``GET /_standin/s3-index`` with :func:`stats` as JSON."""

    def __init__(self, app: Any):
        self.app = app

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if environ.get("PATH_INFO") != STATS_PATH:
            return self.app(environ, start_response)
        body = json.dumps(stats()).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def stats_of(url: str) -> dict[str, dict[str, int]]:
    """:func:`stats` of the stand-in at ``url`` (its ``GET /_standin/s3-index``)."""
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=30)
    try:
        connection.request("GET", STATS_PATH)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def _plain(*values: Any) -> bool:
    """Each value is a string or None: what the walk handles (moto decides anything else itself)."""
    return all(value is None or isinstance(value, str) for value in values)
