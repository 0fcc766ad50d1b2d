"""Site-wide opt-outs of URL sources: robots.txt (RFC 9309) and TDMRep (W3C TDM Reservation
Protocol), checked before any image of a host is downloaded, cached per host.

* **robots.txt** - ``<scheme>://<host>[:port]/robots.txt``, parsed with ``protego`` (Scrapy's
  RFC 9309 parser: ``*`` and ``$`` patterns, longest match, ``Allow`` over ``Disallow`` on a
  tie), for the User-Agent's product token (``cmrops`` in ``cmrops/0.1 (...)``), falling back
  to the ``*`` group. As RFC 9309 says: a 2xx answer is parsed (at most
  :data:`MAX_DOCUMENT_BYTES`), redirects are followed (the fetcher's ``max_redirects``), a 4xx
  answer means no restriction, and a 5xx answer or no answer at all means *complete disallow*
  for now - the URL gets the retryable status ``opt_out_unknown`` and a later run asks again.
* **TDMRep** - ``<origin>/.well-known/tdmrep.json``: a JSON array of rules ``{"location":
  pattern, "tdm-reservation": 0|1, "tdm-policy": url}``; a URL matching a rule with
  ``tdm-reservation: 1`` has its text-and-data-mining rights reserved (EU DSM directive art. 4)
  and is not collected. ``location`` patterns follow robots.txt syntax (``*`` any run of
  characters, a final ``$`` anchors the end, else a prefix); the longest matching pattern
  decides. 404 (or any 4xx), or a file that is not such a JSON array, means no reservation; a
  5xx or no answer is ``opt_out_unknown`` as for robots.txt. The image response's own
  ``tdm-reservation: 1`` header is honoured by the fetcher (:mod:`cmrops.sources.http_fetch`).

Each host's answers are cached for :data:`CACHE_SECONDS` (RFC 9309: at most 24 hours), one
fetch per host even when many worker threads ask at once. Both checks are on by default and
off only by the source's ``download`` params (``respect_robots_txt``, ``respect_tdmrep``).
Every refusal is a status with a sentence saying which file, rule and host decided it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CACHE_SECONDS",
    "MAX_DOCUMENT_BYTES",
    "OPT_OUT_UNKNOWN",
    "ROBOTS_DISALLOWED",
    "TDM_RESERVED",
    "Document",
    "OptOutChecker",
    "tdm_reserved_header",
]

ROBOTS_DISALLOWED = "robots_disallowed"  # the host's robots.txt disallows the path for us
TDM_RESERVED = "tdm_reserved"  # TDMRep: tdm-reservation 1 (tdmrep.json or response header)
OPT_OUT_UNKNOWN = "opt_out_unknown"  # robots.txt / tdmrep.json gave a 5xx or no answer: retry
#: robots.txt and tdmrep.json bodies read at most this far (RFC 9309: at least 500 KiB).
MAX_DOCUMENT_BYTES = 512 * 1024
#: How long a host's answers are reused (RFC 9309: no more than 24 hours).
CACHE_SECONDS = 24 * 3600.0
#: How long "could not be read" is reused before the file is asked for again.
UNKNOWN_SECONDS = 300.0


@dataclass(frozen=True)
class Document:
    """What the fetcher got for a robots.txt / tdmrep.json request."""

    status: str  # "ok", "http_<code>", or a failure reason (timeout, connection_error, ...)
    http_status: int | None
    body: bytes = b""
    detail: str = ""


@dataclass(frozen=True)
class _Answer:
    """A host's parsed file: a checker of paths, or a fixed verdict."""

    expires: float
    check: Callable[[str], tuple[str, str] | None]


def _always(verdict: tuple[str, str] | None) -> Callable[[str], tuple[str, str] | None]:
    return lambda _path: verdict


@dataclass(frozen=True)
class _Unknown:
    """A file that could not be read: every path is ``opt_out_unknown`` (for a short while)."""

    detail: str

    def __call__(self, _path: str) -> tuple[str, str]:
        return OPT_OUT_UNKNOWN, self.detail


class OptOutChecker:
    """Per-host robots.txt and TDMRep verdicts for one fetcher (thread-safe).

    ``get(url)`` fetches a small document (through the fetcher's own SSRF-checked,
    rate-limited path) and returns a :class:`Document`."""

    def __init__(
        self,
        get: Callable[[str], Document],
        token: str,
        robots: bool = True,
        tdmrep: bool = True,
        ttl: float = CACHE_SECONDS,
    ) -> None:
        self.get, self.token = get, token or "*"
        self.robots, self.tdmrep, self.ttl = robots, tdmrep, ttl
        self._answers: dict[tuple[str, str], _Answer] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()
        self.fetched: dict[str, int] = {"robots.txt": 0, "tdmrep.json": 0}

    @property
    def enabled(self) -> bool:
        return self.robots or self.tdmrep

    def check(self, origin: str, path: str) -> tuple[str, str] | None:
        """``(status, detail)`` when ``path`` (path and query) of ``origin``
        (``scheme://host[:port]``) may not be collected, else None."""
        for kind, on in (("robots.txt", self.robots), ("tdmrep.json", self.tdmrep)):
            if not on:
                continue
            verdict = self._answer(kind, origin).check(path)
            if verdict is not None:
                return verdict
        return None

    def _answer(self, kind: str, origin: str) -> _Answer:
        key = (kind, origin)
        with self._lock:
            hit = self._answers.get(key)
            if hit is not None and hit.expires > time.monotonic():
                return hit
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one fetch per host and file, however many threads ask
            with self._lock:
                hit = self._answers.get(key)
            if hit is not None and hit.expires > time.monotonic():
                return hit
            check = self._robots(origin) if kind == "robots.txt" else self._tdmrep(origin)
            unknown = isinstance(check, _Unknown)
            answer = _Answer(time.monotonic() + (UNKNOWN_SECONDS if unknown else self.ttl), check)
            with self._lock:
                self._answers[key] = answer
                self.fetched[kind] += 1
                if len(self._answers) > 100_000:
                    self._answers = {k: v for k, v in self._answers.items()
                                     if v.expires > time.monotonic()}  # fmt: skip
            return answer

    def _unknown(self, url: str, doc: Document) -> Callable[[str], tuple[str, str] | None]:
        why = doc.detail or doc.status
        return _Unknown(f"{url} could not be read ({why}): nothing of the host is collected "
                        "until a later run can read it")  # fmt: skip

    def _robots(self, origin: str) -> Callable[[str], tuple[str, str] | None]:
        from protego import Protego

        url = f"{origin}/robots.txt"
        doc = self.get(url)
        if doc.status != "ok":
            if doc.http_status is not None and 400 <= doc.http_status < 500:
                return _always(None)  # RFC 9309 2.3.1.3: unavailable, no restriction
            return self._unknown(url, doc)
        text = doc.body[:MAX_DOCUMENT_BYTES].decode("utf-8", "replace")
        try:
            rules = Protego.parse(text)
        except Exception as e:  # a broken file restricts nothing (as crawlers read it)
            return _always(None) if not text.strip() else self._unparsable(url, e)
        token = self.token

        def check(path: str) -> tuple[str, str] | None:
            if rules.can_fetch(f"{origin}{path}", token):
                return None
            return ROBOTS_DISALLOWED, f"{url} disallows {path[:200]} for {token}"

        return check

    def _unparsable(self, url: str, e: Exception) -> Callable[[str], tuple[str, str] | None]:
        return _Unknown(f"{url} could not be parsed ({type(e).__name__})")

    def _tdmrep(self, origin: str) -> Callable[[str], tuple[str, str] | None]:
        url = f"{origin}/.well-known/tdmrep.json"
        doc = self.get(url)
        if doc.status != "ok":
            if doc.http_status is not None and 400 <= doc.http_status < 500:
                return _always(None)
            return self._unknown(url, doc)
        rules = parse_tdmrep(doc.body[:MAX_DOCUMENT_BYTES])

        def check(path: str) -> tuple[str, str] | None:
            rule = match_tdmrep(rules, path)
            if rule is None or not rule["reserved"]:
                return None
            policy = f" (tdm-policy {rule['policy']})" if rule["policy"] else ""
            return TDM_RESERVED, (
                f"{url} reserves text-and-data-mining rights for {rule['location']!r}{policy}"
            )

        return check


def parse_tdmrep(body: bytes) -> list[dict[str, Any]]:
    """The rules of a tdmrep.json (malformed files and entries are ignored: no reservation)."""
    try:
        data = json.loads(body.decode("utf-8-sig", "replace"))
    except ValueError:
        return []
    if not isinstance(data, list):
        return []
    rules = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("location"), str):
            continue
        reserved = item.get("tdm-reservation")
        policy = item.get("tdm-policy")
        rules.append(
            {
                "location": item["location"],
                "reserved": reserved in (1, "1", True),
                "policy": policy if isinstance(policy, str) else None,
                "pattern": _pattern(item["location"]),
            }
        )
    return rules


def _pattern(location: str) -> re.Pattern[str]:
    loc = location if location.startswith("/") else "/" + location
    anchored = loc.endswith("$")
    body = re.escape(loc[:-1] if anchored else loc).replace(r"\*", ".*")
    return re.compile(body + ("$" if anchored else ""))


def match_tdmrep(rules: list[dict[str, Any]], path: str) -> dict[str, Any] | None:
    """The rule that decides for ``path``: the longest matching location, the first on a tie."""
    best: dict[str, Any] | None = None
    for rule in rules:
        if rule["pattern"].match(path) and (
            best is None or len(rule["location"]) > len(best["location"])
        ):
            best = rule
    return best


def tdm_reserved_header(values: list[str]) -> bool:
    """The response's ``tdm-reservation`` header reserves TDM rights (value 1)."""
    return any(v.strip() == "1" for v in values)
