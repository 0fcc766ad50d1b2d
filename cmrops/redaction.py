"""Credentials in URLs: masked wherever a URL is shown, split off where a URL is used.

A URL may carry a secret in its userinfo part (``https://user:password@host/``): an S3 endpoint
(``$CMROPS_S3_ENDPOINT_URL``), a Pushgateway (``$CMROPS_PUSHGATEWAY_URL``), a DVC remote, a source
manifest's image URL. :func:`redact` is the one function that masks it - in log lines, printed
results, error messages, JSON and Parquet outputs - and every module that shows a URL calls it (the
CLI also installs it on the log handlers). :func:`split_credentials` takes the user and password
out of a URL for the code that authenticates with them (basic auth, S3 keys).

A low module (standard library only): anything in cmrops may import it.
"""

from __future__ import annotations

import os
import re
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["MASK", "redact", "redact_url", "split_credentials"]

MASK: Final = "***"
#: ``scheme://`` then a userinfo part: up to the last ``@`` before the host's end (``/?#``).
_USERINFO: Final = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?:[^/?#\s@]*@)+")


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it masked: ``https://u:pw@host/x`` ->
    ``https://***@host/x``. Safe on any text (log lines, dvc output, JSON); idempotent."""
    if "@" not in text or "://" not in text:
        return text
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)


def redact_url(url: str | os.PathLike[str] | None) -> str:
    """One URL (or path) as it may be shown: :func:`redact` of its text; ``""`` for None."""
    return "" if url is None else redact(os.fspath(url))


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``(url without userinfo, user, password)``, percent-decoded; ``(url, None, None)`` when
    the URL has none (or does not parse)."""
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return url, None, None
    if user is None and password is None:
        return url, None, None
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return (
        bare,
        unquote(user) if user is not None else None,
        unquote(password) if password is not None else None,
    )
