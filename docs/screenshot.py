"""The README's screenshot: the UI in use, taken in headless Chromium.

    .venv/bin/python docs/screenshot.py [--url http://127.0.0.1:7860] [--out docs/screenshot.png]

Against a running server (``make run``) when ``--url`` answers; otherwise it
serves ``$SWITCHBOARD_HOME`` (after ``switchboard bootstrap``) itself on a free
loopback port for the length of the shot. It asks the demo support assistant a
question, waits for the streamed answer and its note (adapter, confidence,
sources), opens the sources and saves the page.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
QUESTION = "How long is the warranty on a backpack?"


def answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def server(url: str | None):
    """The URL of a server to photograph: the one given if it answers, else one started here."""
    if url and answers(url):
        yield url
        return
    from bot.api.app import create_app
    from bot.api.server import serving
    from bot.parts import Parts
    from core.settings import load_settings

    parts = Parts(load_settings())
    if not parts.registry.names():
        raise SystemExit("no adapters installed: run `switchboard bootstrap` (or `make run`) first")
    parts.warm()
    with serving(create_app(parts)) as live:
        yield live


def shoot(url: str, out: Path, question: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.locator("#message textarea").fill(question)
        page.locator("#send").click()
        note = page.locator("#chatbot").get_by_text("Answered by")
        expect(note).to_be_visible(timeout=300_000)
        note.click()  # open the sources
        page.wait_for_timeout(800)  # the accordion's animation
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860", help="A running server to photograph.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png", help="Where the PNG goes.")
    parser.add_argument("--question", default=QUESTION, help="What to ask the support assistant.")
    args = parser.parse_args()
    with server(args.url) as url:
        shoot(url, args.out, args.question)
    print(f"screenshot: {args.out}")


if __name__ == "__main__":
    main()
