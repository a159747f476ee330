"""The live terminal monitor (Textual). The only package besides the CLI's lazy import that imports Textual.

Layout by area: ``app`` (the App and ``run_monitor``), ``model`` (analysis -> plain view objects,
no Textual), ``braille`` (curve rasterising, numpy only), ``text`` (log text made safe to show),
``widgets/`` and ``screens/``.
"""
