"""The Gradio UI on the live server: gradio_client against the chat endpoint, and a real headless Chromium."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # drives the UI in headless Chromium

WARRANTY_QUESTION = "What is the warranty on your backpacks?"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def assistant_turns(parts) -> list[tuple[str, str]]:
    with sqlite3.connect(parts.settings.conversations_db) as db:
        return db.execute("SELECT id, content FROM messages WHERE role = 'assistant' ORDER BY rowid").fetchall()


def test_gradio_client_chats_through_the_ui_endpoint(live_server):
    from gradio_client import Client

    client = Client(live_server.url, verbose=False)
    before = len(assistant_turns(live_server.parts))
    _, history = client.predict(WARRANTY_QUESTION, [], "auto", api_name="/chat")
    user, answer, note = history[-3:]
    assert user["role"] == "user" and answer["role"] == "assistant" and not answer["metadata"]
    assert note["metadata"]["title"].startswith("Answered by support v1 · confidence 0.")
    assert "**[1] " in note["content"][0]["text"]
    turns = assistant_turns(live_server.parts)
    assert len(turns) == before + 1
    assert answer["content"][0]["text"] in (turns[-1][1], "(no answer)")

    with pytest.raises(Exception, match="the message is empty"):
        client.predict("   ", [], "auto", api_name="/chat")


def test_a_second_user_is_served_while_the_first_answer_streams(live_server):
    """Gradio runs one event at a time by default; the UI raises that so several users chat at once."""
    import time

    from gradio_client import Client

    first_user, second_user = Client(live_server.url, verbose=False), Client(live_server.url, verbose=False)
    first = first_user.submit("Tell me about mountains.", [], "base", api_name="/chat")
    deadline = time.monotonic() + 120
    while len(first.outputs()) < 2:  # the echo, then the first streamed piece
        assert not first.done() and time.monotonic() < deadline, "the first answer did not start streaming"
        time.sleep(0.01)
    second = second_user.submit("Hello!", [], "base", api_name="/chat")
    while not second.outputs():
        assert time.monotonic() < deadline, "the second user got nothing"
        time.sleep(0.01)
    assert not first.done()  # the second user was answered while the first answer was still streaming
    first.result(timeout=120)
    second.result(timeout=120)


def test_browser_chat_streams_shows_sources_and_records_a_rating(live_server, browser):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(live_server.url)
    page.locator("#chatbot").wait_for(timeout=60_000)
    # Record every text the first answer shows: an answer with sources appears only once checked, never partly.
    page.evaluate(
        """() => {
            window.__answers = [];
            const chat = document.querySelector('#chatbot');
            new MutationObserver(() => {
                const bot = chat.querySelector('[data-testid="bot"]');
                const text = bot ? bot.innerText.trim() : '';
                if (text && window.__answers[window.__answers.length - 1] !== text) window.__answers.push(text);
            }).observe(chat, {subtree: true, childList: true, characterData: true});
        }"""
    )
    page.locator("#message textarea").fill(WARRANTY_QUESTION)
    page.locator("#send").click()
    note = page.locator("#chatbot").get_by_text("Answered by support v1")
    expect(note).to_be_visible(timeout=180_000)
    answers = page.evaluate("window.__answers")
    message_id, text = assistant_turns(live_server.parts)[-1]
    assert answers == [answers[-1]] and answers[-1].startswith(text[:40]), answers  # never an unchecked draft

    page.locator('#chatbot button[aria-label="Like"]').last.click()
    expect(page.locator("#feedback-status")).to_contain_text("Thanks", timeout=30_000)
    note.click()  # expand the sources
    expect(page.locator("#chatbot strong").get_by_text("[1] ", exact=False)).to_be_visible()
    page.wait_for_timeout(800)  # let the opening animation finish before the screenshot
    page.screenshot(path=str(ARTIFACTS / "ui-chat.png"))
    page.close()

    with sqlite3.connect(live_server.parts.settings.conversations_db) as db:
        rating = db.execute("SELECT rating FROM feedback WHERE message_id = ?", (message_id,)).fetchone()
    assert rating == ("up",)
    assert text in answers[-1]


def test_browser_admin_tabs_need_the_token_then_manage_adapters_and_knowledge(live_server, browser, tmp_path):
    from playwright.sync_api import expect

    document = tmp_path / "pickup.md"
    document.write_text("# Store pickup\n\nOrders can be picked up at the Seattle store within 10 days.\n")
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(live_server.url)

    page.get_by_role("tab", name="Adapters").click()
    page.get_by_role("button", name="Show adapters").click()
    expect(page.locator(".toast-body").first).to_contain_text("admin token", timeout=30_000)
    page.locator("#adapters-token input").fill(live_server.token)
    page.get_by_role("button", name="Show adapters").click()
    expect(page.locator("#adapters-table")).to_contain_text("legal", timeout=30_000)
    expect(page.locator("#adapters-table")).to_contain_text("support")
    page.locator("#route-message textarea").fill("Where is my order?")
    page.get_by_role("button", name="Route", exact=True).click()
    expect(page.locator("#route-result")).to_contain_text("support", timeout=30_000)

    page.get_by_role("tab", name="Knowledge").click()
    page.locator("#knowledge-token input").fill(live_server.token)
    page.locator("#knowledge-collection input").fill("support")
    page.locator("#knowledge-collection input").press("Enter")
    page.locator("#knowledge-files input[type=file]").set_input_files(str(document))
    expect(page.locator("#knowledge-files")).to_contain_text("pickup.md", timeout=30_000)
    page.get_by_role("button", name="Upload into collection").click()
    expect(page.locator("#knowledge-status")).to_contain_text("Ingested 1 document(s)", timeout=60_000)
    expect(page.locator("#knowledge-table")).to_contain_text("pickup.md")
    assert "pickup.md" in [d["source"] for d in live_server.parts.knowledge.list_documents("support")]

    page.locator("#knowledge-source input").click()
    page.get_by_role("option", name="pickup.md").click()
    page.get_by_role("button", name="Remove document").click()
    expect(page.locator("#knowledge-status")).to_contain_text("Removed pickup.md", timeout=30_000)
    page.close()
    assert "pickup.md" not in [d["source"] for d in live_server.parts.knowledge.list_documents("support")]
