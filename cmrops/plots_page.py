"""The HTML page ``dvc plots show`` writes, readable with no network.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so offline (and on machines
that may not reach one) it is blank. ``.dvc/config`` names this project's page instead
(``plots.html_template = plots/offline.html``, i.e. ``.dvc/plots/offline.html``), and that page
carries the three libraries inline: a bundle made by ``vl-convert-python`` (the Vega project's
own package, which vendors them), assigning ``vegaEmbed``, ``vega`` and ``vegaLite`` to
``window`` as DVC's chart snippets expect. Vega-Lite is pinned to the 5.x line that DVC's and
the project's templates are written for.

The page is generated, not kept in git (about 0.9 MB of minified JavaScript):
``scripts/bootstrap.sh`` writes it, and ``cmrops plots page`` rewrites it (after an upgrade of
``vl-convert-python``, or in a checkout set up otherwise).
"""

from __future__ import annotations

import os
from pathlib import Path

from cmrops import io

__all__ = ["PAGE", "VEGA_LITE", "page_html", "write_page"]

#: The page, relative to the project root (``plots.html_template`` in ``.dvc/config`` is
#: relative to ``.dvc/``).
PAGE = ".dvc/plots/offline.html"
#: The Vega-Lite line the bundle carries (DVC's templates declare the v5 schema).
VEGA_LITE = "v5.21"

_HEAD = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>cmrops plots</title>
    <!-- vega, vega-lite %(vl)s and vega-embed, inline (vl-convert-python %(vlc)s):
         this page needs no network -->
    <script type="text/javascript">
"""
_TAIL = """
    </script>
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def page_html() -> str:
    """The page: DVC's placeholders (``{plot_divs}``, ``{refresh_tag}``) around the libraries."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    for token in ("</script", "{plot_divs}", "{refresh_tag}", "{scripts}"):
        if token in bundle:  # it would end the script early or be filled in by DVC
            raise ValueError(f"the vl-convert bundle contains {token!r}: cannot inline it")
    version = getattr(vl_convert, "__version__", "?")
    return _HEAD % {"vl": VEGA_LITE, "vlc": version} + bundle + _TAIL


def write_page(project: str | os.PathLike[str] = ".") -> Path:
    """Write :data:`PAGE` under ``project``; its path."""
    path = Path(project) / PAGE
    with io.atomic_output(path, "w") as fh:
        fh.write(page_html())
    path.chmod(0o644)  # a page, not a secret (the temporary file was private)
    return path
