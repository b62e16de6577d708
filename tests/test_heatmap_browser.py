"""The heatmap page in a real headless Chromium (tests/browser.py, over the DevTools
Protocol): it loads without a console error, draws something, shows a token's alternatives
on hover and on keyboard focus, runs none of the model's text; every shipped recording's
page. Skipped, with the reason, where no chromium is installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from browser import Browser, Page, png_pixels, skip_reason
from livepplx.views.heatmap import replay_page
from test_heatmap import EVERY_RECORDING, chat_event
from conftest import sse

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser.start() as b:
        yield b


def load(browser: Browser, tmp_path: Path, html: str, name: str = "page.html") -> Page:
    path = tmp_path / name
    path.write_text(html, encoding="utf-8")
    return browser.open(path)


def token_centre(page: Page, n: int) -> tuple[float, float]:
    return tuple(page.evaluate(  # type: ignore[return-value]
        f"(function(){{var e=document.querySelectorAll('.answer .tok')[{n}];e.scrollIntoView({{block:'center'}});"
        "var r=e.getBoundingClientRect();"
        "return [r.left + r.width / 2, r.top + r.height / 2];})()"))


def tip(page: Page) -> dict[str, Any]:
    return page.evaluate("(function(){var t=document.getElementById('tip');"
                         "return {hidden: t.hidden, visible: t.offsetWidth > 0 && t.offsetHeight > 0,"
                         "rows: Array.from(t.querySelectorAll('tr')).map(r => r.cells[0].textContent),"
                         "text: t.textContent};})()")


def not_blank(png: bytes) -> tuple[int, int]:
    """(pixels that are not the background, distinct colours) of a screenshot."""
    width, height, channels, rows = png_pixels(png)
    inked, colours = 0, set()
    for row in rows:
        for x in range(0, width * channels, channels):
            pixel = row[x:x + 3]
            colours.add(pixel)
            if pixel != b"\xff\xff\xff":
                inked += 1
    return inked * 100 // (width * height), len(colours)


@pytest.mark.parametrize("path", EVERY_RECORDING, ids=lambda p: p.stem)
def test_every_recordings_page_loads_clean_draws_and_shows_alternatives_on_hover(
        browser: Browser, tmp_path: Path, path: Path) -> None:
    html = replay_page(path.read_bytes(), title=path.stem, stop_above=8.0)
    page = load(browser, tmp_path, html)
    assert page.errors == []
    assert page.evaluate("document.querySelectorAll('.answer .tok').length") > 5
    assert page.evaluate("document.querySelector('svg.chart polyline').getAttribute('points').split(' ').length") > 1
    inked, colours = not_blank(page.screenshot(scale=0.25))
    assert inked >= 5 and colours >= 20, (inked, colours)  # text, coloured tokens, the chart: not a blank page
    data = json.loads(page.evaluate("document.getElementById('livepplx-data').textContent"))["choices"]["0"]["tokens"]
    assert tip(page)["hidden"]
    n = next(i for i, t in enumerate(data) if len(t["a"]) >= 2 and t["t"].strip())  # a token with a choice
    page.hover(*token_centre(page, n))
    shown = tip(page)
    assert shown["visible"] and not shown["hidden"]
    assert shown["rows"] == [json.dumps(a[0])[1:-1] for a in data[n]["a"]]
    assert "logprob" in shown["text"] and "rank" in shown["text"]
    page.hover(2, 2)
    assert tip(page)["hidden"]


def test_keyboard_focus_shows_a_tokens_alternatives(browser: Browser, tmp_path: Path) -> None:
    html = replay_page(sse(chat_event("Hi", -0.5, tops=[("Hi", -0.5), ("Yo", -1.5)]),
                           chat_event(" there", -2.5, tops=[(" you", -0.3), (" there", -2.5)], finish="stop")))
    page = load(browser, tmp_path, html)
    page.key("Tab", "Tab", 9)
    assert page.evaluate("document.activeElement.textContent") == "Hi"
    assert tip(page)["rows"] == ["Hi", "Yo"]
    page.key("Tab", "Tab", 9)
    shown = tip(page)
    assert shown["rows"] == [" you", " there"] and "rank 2 of 2 listed" in shown["text"]
    page.key("Escape", "Escape", 27)
    assert tip(page)["hidden"]
    assert page.errors == []


def test_the_models_markup_is_shown_never_run(browser: Browser, tmp_path: Path) -> None:
    hostile = ["<script>window.pwned=1</script>", "</script><script>window.pwned=2</script>",
               "<img src=x onerror=window.pwned=3>", "<!--", "\u2028", "\ud800", "\x1b[2J"]
    events = [chat_event(t, -1.0, tops=[(t, -1.0), ("<b onmouseover=window.pwned=4>x</b>", -2.0)]) for t in hostile]
    html = replay_page(sse(*events, chat_event("end", -0.1, finish="stop")), title="<script>window.pwned=5</script>")
    page = load(browser, tmp_path, html)
    assert page.errors == []
    for n in range(len(hostile)):
        page.hover(*token_centre(page, n))
    assert page.evaluate("window.pwned === undefined") is True
    assert page.evaluate("document.querySelectorAll('script').length") == 2
    assert page.evaluate("document.querySelectorAll('img, b').length") == 0
    text = page.evaluate("document.querySelector('.answer').textContent")
    assert "<script>window.pwned=1</script>" in text and "<img src=x onerror=window.pwned=3>" in text
    assert page.evaluate("document.title").startswith("<script>window.pwned=5</script>")
    assert not any(e.get("method") == "Page.javascriptDialogOpening" for e in page.events)


def test_two_choices_two_sections_each_hoverable(browser: Browser, tmp_path: Path) -> None:
    events = []
    for i in range(5):
        events += [chat_event(f"a{i} ", -0.2, index=0, tops=[(f"a{i} ", -0.2), ("q", -2.0)]),
                   chat_event(f"b{i} ", -3.0, index=1, tops=[("r", -0.1), (f"b{i} ", -3.0)])]
    events += [chat_event("", -0.1, index=0, finish="stop"), chat_event("", -0.1, index=1, finish="stop")]
    page = load(browser, tmp_path, replay_page(sse(*events)))
    assert page.errors == [] and page.evaluate("document.querySelectorAll('section').length") == 2
    page.hover(*token_centre(page, 6))  # the first token of choice 1 (choice 0 ends with an empty one)
    assert tip(page)["rows"] == ["r", "b0 "]


def test_a_choice_index_past_javascripts_integers_still_shows_its_tip(browser: Browser, tmp_path: Path) -> None:
    # +"9007199254740993" is 9007199254740992 and +"1" + 30 zeros is 1e+30: the data's keys are text.
    for index in (2**53 + 1, 10**30):
        page = load(browser, tmp_path, replay_page(sse(chat_event("a", -0.5, index=index, tops=[("a", -0.5)]),
                                                       chat_event("b", -0.5, index=index, finish="stop"))))
        page.hover(*token_centre(page, 0))
        assert page.errors == [] and tip(page)["visible"] and tip(page)["rows"] == ["a"]
