"""The live terminal monitor (Textual). The only package besides the CLI's lazy import that imports Textual.

Layout by area: ``app`` (the App and ``run_monitor``: draws, asks, acts on keys), ``updates`` (the
feed's message and how screens follow the view), ``control`` (stop and restart, after asking),
``themes``, ``braille`` (curve rasterising, numpy only), ``text`` (log text made safe to show),
``widgets/`` and ``screens/``. What it draws comes from ``prefwatch.view`` (no Textual).
"""
