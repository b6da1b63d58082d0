"""The Training tab on the live server, in a real Chromium: the token, a dataset preview, a real run, rollback.

The run trains a dedicated adapter for two steps on a handful of logged
turns: enough to show progress, a loss curve and the evaluation report, not
to teach anything. It is started in the browser and looked up over HTTP, so
the UI and the admin API are seen to share one run manager.
"""

from __future__ import annotations

import re

import httpx
import pytest
from test_ui import ARTIFACTS

pytestmark = pytest.mark.slow  # trains an adapter from the UI in headless Chromium

ADAPTER = "ui-trained"  # the other tests use 'support' and 'legal'
MAX_STEPS = 2
RUN_TIMEOUT_MS = 600_000
PAIRS = [
    ("What colour is a lemon?", "A lemon is yellow."),
    ("What do hens lay?", "Hens lay eggs."),
    ("Which animal has a trunk?", "An elephant has a trunk."),
    ("How many sides has a triangle?", "A triangle has three sides."),
    ("What do pandas eat?", "Pandas eat bamboo."),
    ("Where do penguins live?", "Penguins live in Antarctica."),
    ("What do bakers make?", "Bakers make bread and cakes."),
    ("What tool cuts paper?", "Scissors cut paper."),
]
REJECTED = [("What is the colour of coal?", "Black."), ("What sound does a cat make?", "Meow.")]
PLANTED_EMAIL = " (write to me at ana.lopez@example.org)"


@pytest.fixture(scope="module")
def trainable(live_server, make_random_adapter):
    """A served v1 of the adapter (random weights) and its logged turns: 8 rated up, one with an email, 2 rated down.

    The adapter is removed afterwards, so the router of later tests sees the demo adapters only.
    """
    parts = live_server.parts
    parts.registry.install(make_random_adapter(41), ADAPTER, description="Trained in the UI test")
    for i, (question, answer) in enumerate(PAIRS + REJECTED):
        asked = question + (PLANTED_EMAIL if i == 0 else "")
        ids = parts.log.log_turn(None, asked, answer, adapter=ADAPTER, adapter_version=1, confidence=0.9, sources=[],
                                   latency_ms=500, prompt_tokens=20, completion_tokens=8)
        parts.log.add_feedback(ids.message_id, "up" if i < len(PAIRS) else "down")
    yield ADAPTER
    parts.admin.remove_adapter(ADAPTER)


@pytest.fixture
def http(live_server):
    """An HTTP client of the live server that carries the admin token."""
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {live_server.token}"}, timeout=120) as client:
        yield client


def open_training_tab(browser, live_server, token: str, max_steps: int = MAX_STEPS):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(live_server.url)
    page.get_by_role("tab", name="Training").click()
    page.locator("#training-token input").fill(token)
    page.locator("#training-adapter input").fill(ADAPTER)
    page.locator("#training-adapter input").press("Enter")
    page.locator("#training-max-steps input").fill(str(max_steps))
    return page


def run_folders(live_server) -> set[str]:
    runs = live_server.parts.settings.runs_dir
    return {p.name for p in runs.iterdir()} if runs.is_dir() else set()


def chat_version(http: httpx.Client) -> int:
    """The version of the adapter that answers a chat turn asked for by name."""
    body = {"model": ADAPTER, "messages": [{"role": "user", "content": "What do hens lay?"}], "max_tokens": 2}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["switchboard"]["adapter_version"]


def test_a_wrong_token_shows_an_error_and_starts_no_run(live_server, browser, trainable):
    from playwright.sync_api import expect

    before = run_folders(live_server)
    page = open_training_tab(browser, live_server, "not-the-token")
    page.get_by_role("button", name="Start training").click()
    expect(page.locator(".toast-body").first).to_contain_text("admin token", timeout=30_000)
    page.get_by_role("button", name="Preview dataset").click()
    expect(page.locator(".toast-body").last).to_contain_text("admin token", timeout=30_000)
    expect(page.locator("#training-status")).not_to_contain_text("Run ")  # the outputs show Gradio's "Error" only
    expect(page.locator("#training-preview")).not_to_contain_text("kept")
    page.close()
    assert run_folders(live_server) == before


def test_training_tab_previews_runs_reports_and_rolls_back(live_server, browser, trainable, http):
    from playwright.sync_api import expect

    parts = live_server.parts
    before = run_folders(live_server)
    page = open_training_tab(browser, live_server, live_server.token)

    page.get_by_role("button", name="Preview dataset").click()
    preview = page.locator("#training-preview")
    expect(preview).to_contain_text("10 read, 8 kept: 7 for training, 1 held out", timeout=60_000)
    expect(preview).to_contain_text("dropped 2: rating is not up")
    expect(preview).to_contain_text("personal data scrubbed: 1 email")
    assert run_folders(live_server) == before  # a preview trains nothing

    page.locator("#training-force input").check()  # a two-step candidate may lose to v1; deploy it anyway to roll back
    page.evaluate(  # every status the page shows, to see the run's progress go by
        """() => {
            window.__statuses = [];
            const view = document.querySelector('#training-status');
            new MutationObserver(() => window.__statuses.push(view.innerText.trim()))
                .observe(view, {subtree: true, childList: true, characterData: true});
        }"""
    )
    page.get_by_role("button", name="Start training").click()
    status = page.locator("#training-status")
    expect(status).to_contain_text(f"of {ADAPTER}:", timeout=30_000)
    run_id = re.search(r"Run (\S+) of", status.inner_text()).group(1)

    # One run manager behind both edges: the API refuses a second run while this one is active, and knows its id.
    refused = http.post("/admin/train", json={"adapter": ADAPTER, "from_logs": True, "max_steps": 1})
    assert refused.status_code == 409 and "already in progress" in refused.json()["error"]["message"], refused.text
    assert http.get(f"/admin/train/{run_id}").json()["state"] in ("queued", "running")

    report = page.locator("#training-report")
    expect(report).to_contain_text("Gate:", timeout=RUN_TIMEOUT_MS)
    expect(status).to_contain_text("succeeded")
    expect(status).to_contain_text(f"step {MAX_STEPS}/{MAX_STEPS}")
    seen = page.evaluate("window.__statuses")
    assert any("running · training · step" in text for text in seen), seen  # progress was shown while it trained
    for column in ("candidate", "live version", "base", "held-out loss", "held-out perplexity", "general perplexity"):
        expect(report).to_contain_text(column)
    expect(report).to_contain_text(f"Deployed {ADAPTER} v2")
    expect(page.locator("#training-loss canvas, #training-loss svg").first).to_be_visible()

    finished = http.get(f"/admin/train/{run_id}").json()
    assert finished["state"] == "succeeded" and finished["report"]["installed"] == {"name": ADAPTER, "version": 2}
    assert [p["step"] for p in finished["losses"]] == list(range(1, MAX_STEPS + 1))
    verdict = "passed" if finished["report"]["gate"]["passed"] else "rejected"
    expect(report).to_contain_text(f"Gate: {verdict}")
    if verdict == "rejected":
        expect(report).to_contain_text("installed anyway")  # deployed because the box was ticked

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-training.png"), full_page=True)

    assert chat_version(http) == 2  # the engine now holds v2
    newer = parts.registry.get(ADAPTER).key
    page.get_by_role("button", name="Roll back").click()
    expect(page.locator("#training-rollback-status")).to_contain_text(f"{ADAPTER} serves v1 again", timeout=30_000)
    page.close()
    assert parts.registry.get(ADAPTER).version == 1
    assert newer not in parts.engine.resident_adapters
    assert chat_version(http) == 1
