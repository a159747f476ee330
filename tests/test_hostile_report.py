"""The Markdown report of a grid whose folder names are markup, rendered by a real CommonMark renderer that
lets HTML through (markdown-it-py, as many sites and tools render Markdown), and the page loaded in a real
headless Chromium: no element, link or image comes from the data, no script in it runs, and every name
reads on the page exactly as it is on disk."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import prefwatch
from markdown_it import MarkdownIt
from test_report_html import chromium

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_runs" / "tiny-demo"
TITLE = "prefwatch report"
EVIL = {  # a cell folder of the sample grid -> the name it is given
    "dpo-r8": "<img src=x onerror=\"document.title='PWNED'\">dpo-r8",
    "dpo-r16": "![t](y.png) *r16* `x` ~~s~~ www.example.com evil.com x@y.com #12",
    "simpo-r8": "[go](javascript:alert(1)) <b>|<b> &amp; _i_",
    "simpo-r16": "- 1. # > simpo-r16 <!-- [x]: javascript:x",
}


def renderers() -> dict[str, MarkdownIt]:
    return {
        "commonmark": MarkdownIt("commonmark", {"html": True}).enable("table"),
        # GitHub's flavour: tables, strikethrough and bare addresses turned into links
        "gfm-like": MarkdownIt("gfm-like", {"html": True, "linkify": True}),
    }


def page(body: str) -> str:
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{TITLE}</title></head><body>{body}</body></html>"


class Elements(HTMLParser):
    """The tags of a page and its text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []
        self.title = ""
        self._in_title = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        else:
            self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.tags.append("!--")


@pytest.fixture
def evil_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(SAMPLE, run)
    for cell, name in EVIL.items():
        (run / "cells" / cell).rename(run / "cells" / name)
    return run


def rendered_in_chromium(tmp_path: Path, name: str, html: str) -> Elements:
    path = tmp_path / f"{name}.html"
    path.write_text(page(html))
    dom = chromium(tmp_path, name, "--dump-dom", path.as_uri()).stdout
    assert "</body>" in dom, dom[:500]
    return Elements(dom)


def test_markup_in_the_data_stays_text_in_a_renderer_that_passes_html_and_in_chromium(evil_run, tmp_path):
    done = prefwatch("report", str(evil_run), "--format", "md")
    assert done.returncode in (0, 3), done.stderr
    markdown = done.stdout
    for flavour, renderer in renderers().items():
        html = renderer.render(markdown)
        elements = rendered_in_chromium(tmp_path, flavour, html)
        assert elements.title == TITLE, flavour  # the onerror script never ran
        made = {"h2", "h3", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "p", "strong", "em", "code"}
        assert set(elements.tags) - {"html", "head", "meta", "title", "body"} <= made, (flavour, set(elements.tags))
        text = " ".join("".join(elements.text).split())
        for name in EVIL.values():
            assert text.count(" ".join(name.split())) >= 3, (flavour, name)  # table, cells, findings: each literal


def test_the_detector_sees_markup_that_is_not_escaped(tmp_path):
    """The control for the test above: the same names, not escaped, run their script and make elements."""
    markdown = "".join(f"- {name}\n" for name in EVIL.values())
    elements = rendered_in_chromium(tmp_path, "control", renderers()["gfm-like"].render(markdown))
    assert elements.title == "PWNED"
    assert {"img", "a", "code", "s", "h1"} <= set(elements.tags)


@pytest.mark.parametrize("name", list(EVIL.values()))
def test_markdown_literal_renders_as_its_text(name):
    from prefwatch.core.textsafe import markdown_literal

    for renderer in renderers().values():
        elements = Elements(renderer.render(f"- {markdown_literal(name)}\n"))
        assert elements.tags == ["ul", "li"] and "".join(elements.text).strip() == name
