"""Marks a review page in headless Chromium by a fixed rule, as a stand-in for a
listener (the end-to-end run and its test cannot listen): a window scoring at least
``--correct-from`` is correct, below it wrong (no species named), every fifth unsure.
Saves the verdicts CSV through the page's own Save button and, optionally, a
screenshot of the page.

    python tests/review_by_rule.py review/index.html --downloads . --screenshot docs/review-page.png
"""

from __future__ import annotations

import argparse
import base64
import time
from pathlib import Path

from cdp import Browser, find_browser


def mark_page(page: Path, downloads: Path, correct_from: float, screenshot: Path | None = None) -> Path:
    executable = find_browser()
    if executable is None:
        raise SystemExit("needs Chromium (apt-get install chromium)")
    downloads.mkdir(parents=True, exist_ok=True)
    before = set(downloads.glob("verdicts-*.csv"))
    with Browser(executable, width=1100, height=760) as browser:
        browser.open(page.resolve().as_uri())
        browser.wait_for("[...document.querySelectorAll('audio')].every(a => a.readyState >= 1 || a.error)"
                         " && [...document.images].every(i => i.complete)")
        browser.evaluate(f"""DATA.items.forEach((item, i) => {{
            const verdict = i % 5 === 4 ? "unsure" : item.score >= {correct_from} ? "correct" : "wrong";
            document.querySelector(`#item-${{item.item}} button[data-verdict=${{verdict}}]`).click(); }})""")
        browser.send("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads.resolve()))
        browser.evaluate('document.getElementById("save").click()')
        deadline = time.monotonic() + 20
        while not (saved := set(downloads.glob("verdicts-*.csv")) - before):
            if time.monotonic() > deadline:
                raise RuntimeError("the page saved no CSV")
            time.sleep(0.1)
        if screenshot is not None:
            # at three quarters of the size, so that the PNG stays small enough for the README
            shot = browser.send("Page.captureScreenshot", format="png",
                                clip={"x": 0, "y": 0, "width": 1100, "height": 760, "scale": 0.75})
            screenshot.write_bytes(base64.b64decode(shot["data"]))
    return saved.pop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--downloads", type=Path, default=Path("."))
    parser.add_argument("--correct-from", type=float, default=0.6)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()
    print(mark_page(args.page, args.downloads, args.correct_from, args.screenshot))
