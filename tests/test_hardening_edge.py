"""The HTTP edge tried as an attacker and a careless client would, on live servers with and without a token.

Two servers on loopback share one parts on its own home (the suite's
loaded models, borrowed from ``chat_parts``): one with an admin token, one
without. The case tables at module level (``BAD_BODIES``, ``CROSS_SITE_CASES``,
``METHOD_CASES``) are what ``bench/reliability.py`` counts. Each case says what
must come back; a 5xx, a hang or lost state fails it with that word first, so
the reliability table can sort the failures.
"""

from __future__ import annotations

import io
import json
import zipfile
from types import SimpleNamespace

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

EDGE_TOKEN = "edge-admin-token"
EVIL = "http://evil.example"
SELF = "{self}"  # stands for the server's own origin in the case tables
CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]


def chat_json(**extra) -> bytes:
    return json.dumps({"model": "nobody", "messages": HELLO, **extra}).encode()


def nested(depth: int) -> bytes:
    return b'{"model": "base", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + b"[" * depth + b"]" * depth + b"}"


# (case id, path, body, content type, status): every body the server cannot take is one 4xx, never a 5xx.
BAD_BODIES = [
    ("lone-surrogate-in-message", CHAT, b'{"model": "base", "messages": [{"role": "user", "content": "\\ud800"}]}',
     "application/json", 400),
    ("lone-low-surrogate-in-ignored-field", CHAT, chat_json()[:-1] + b', "user": "a\\udfffb"}', "application/json", 400),
    ("surrogate-in-a-key", CHAT, chat_json()[:-1] + b', "\\ud801": 1}', "application/json", 400),
    ("nested-100000-deep-in-ignored-field", CHAT, nested(100_000), "application/json", 400),
    ("nested-40-deep", CHAT, nested(40), "application/json", 400),
    ("5000-digit-max-tokens", CHAT, chat_json()[:-1] + b', "max_tokens": ' + b"9" * 5000 + b"}", "application/json", 400),
    ("5000-digit-seed", CHAT, chat_json()[:-1] + b', "seed": -' + b"1" * 5000 + b"}", "application/json", 400),
    ("5000-digit-ignored-field", CHAT, chat_json()[:-1] + b', "logit_bias": {"1": ' + b"7" * 5000 + b"}}", "application/json", 400),
    ("nan-temperature", CHAT, chat_json()[:-1] + b', "temperature": NaN}', "application/json", 400),
    ("infinite-top-p", CHAT, chat_json()[:-1] + b', "top_p": Infinity}', "application/json", 400),
    ("overflowing-float", CHAT, chat_json()[:-1] + b', "temperature": 1e999}', "application/json", 400),
    ("text-plain-json", CHAT, chat_json(), "text/plain", 415),
    ("form-urlencoded", CHAT, b"model=base&messages=hi", "application/x-www-form-urlencoded", 415),
    ("invalid-utf8", CHAT, b'{"model": "base", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "application/json", 400),
    ("empty-body", CHAT, b"", "application/json", 400),
    ("json-array", CHAT, b"[1, 2]", "application/json", 400),
    ("json-null", CHAT, b"null", "application/json", 400),
    ("messages-a-string", CHAT, b'{"model": "base", "messages": "hi"}', "application/json", 400),
    ("unknown-role", CHAT, b'{"model": "base", "messages": [{"role": "robot", "content": "hi"}]}', "application/json", 400),
    ("image-content", CHAT, b'{"model": "base", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
     "application/json", 400),
    ("zero-max-tokens", CHAT, chat_json(max_tokens=0), "application/json", 400),
    ("model-a-number", CHAT, b'{"model": 5, "messages": [{"role": "user", "content": "hi"}]}', "application/json", 400),
    ("feedback-text-plain", "/v1/feedback", b'{"message_id": "m", "rating": "up"}', "text/plain", 415),
    ("feedback-unknown-field", "/v1/feedback", b'{"message_id": "m", "rating": "up", "score": 5}', "application/json", 400),
    ("feedback-long-id", "/v1/feedback", b'{"message_id": "' + b"m" * 5000 + b'", "rating": "up"}', "application/json", 400),
    ("feedback-surrogate-correction", "/v1/feedback", b'{"message_id": "m", "rating": "up", "correction": "\\udc00"}',
     "application/json", 400),
    ("train-text-plain", "/admin/train", b'{"adapter": "x"}', "text/plain", 415),
    ("train-nested", "/admin/train", b'{"adapter": "x", "data": ' + b"[" * 50 + b"]" * 50 + b"}", "application/json", 400),
    ("train-huge-int", "/admin/train", b'{"adapter": "x", "max_steps": ' + b"1" * 5000 + b"}", "application/json", 400),
]

# (case id, method, path, headers, status): a browser on another site is refused; tools and the UI's own page are not.
CROSS_SITE_CASES = [
    ("evil-origin-disables-an-adapter", "POST", "/admin/adapters/edgy/disable", {"Origin": EVIL}, 403),
    ("evil-origin-ingests", "POST", "/admin/knowledge/edge", {"Origin": EVIL}, 403),
    ("evil-origin-removes-a-document", "DELETE", "/admin/knowledge/edge/edge.txt", {"Origin": EVIL}, 403),
    ("evil-origin-starts-training", "POST", "/admin/train", {"Origin": EVIL}, 403),
    ("evil-origin-rates", "POST", "/v1/feedback", {"Origin": EVIL}, 403),
    ("other-localhost-port", "POST", "/admin/adapters/edgy/disable", {"Origin": "http://localhost:1"}, 403),
    ("other-loopback-port", "POST", "/v1/feedback", {"Origin": "http://127.0.0.1:1"}, 403),
    ("null-origin", "POST", "/v1/feedback", {"Origin": "null"}, 403),
    ("cross-site-fetch-metadata", "POST", "/admin/adapters/edgy/disable", {"Sec-Fetch-Site": "cross-site"}, 403),
    ("same-site-fetch-metadata", "POST", "/admin/adapters/edgy/disable", {"Sec-Fetch-Site": "same-site"}, 403),
    ("fetch-metadata-beats-a-forged-origin", "POST", "/v1/feedback",
     {"Sec-Fetch-Site": "cross-site", "Origin": SELF}, 403),
    ("evil-origin-uploads-to-gradio", "POST", "/gradio_api/upload", {"Origin": EVIL}, 403),
    ("evil-origin-calls-gradio", "POST", "/gradio_api/queue/join", {"Origin": EVIL}, 403),
    ("dns-rebinding-read", "GET", "/admin/adapters", {"Host": "evil.example"}, 403),
    ("dns-rebinding-write", "POST", "/admin/adapters/edgy/disable", {"Host": "evil.example", "Origin": EVIL}, 403),
    ("curl-without-origin", "POST", "/admin/adapters/edgy/disable", {}, 200),
    ("same-origin-browser", "POST", "/admin/adapters/edgy/enable", {"Origin": SELF, "Sec-Fetch-Site": "same-origin"}, 200),
    ("same-origin-without-fetch-metadata", "POST", "/admin/adapters/edgy/enable", {"Origin": SELF}, 200),
    ("typed-address", "GET", "/admin/adapters", {"Sec-Fetch-Site": "none"}, 200),
    ("localhost-by-name", "GET", "/health", {"Host": "localhost"}, 200),
    ("cross-site-get-of-health", "GET", "/health", {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}, 200),
]

# (case id, method, path, status): a method a route does not take is 405, even where the UI would answer.
METHOD_CASES = [
    ("trace-models", "TRACE", "/v1/models", 405),
    ("trace-chat", "TRACE", CHAT, 405),
    ("get-chat", "GET", CHAT, 405),
    ("delete-chat", "DELETE", CHAT, 405),
    ("put-health", "PUT", "/health", 405),
    ("patch-feedback", "PATCH", "/v1/feedback", 405),
    ("put-adapter", "PUT", "/admin/adapters/edgy", 405),
    ("get-accept", "GET", "/admin/feedback/m/accept", 405),
    ("unknown-route", "GET", "/v1/nothing-here", 404),
]


def ids(table: list[tuple]) -> list[str]:
    return [case[0] for case in table]


# ---- two live servers over one parts ----------------------------------------------------------------


@pytest.fixture(scope="module")
def edge(chat_parts, make_settings, make_random_adapter, tmp_path_factory):
    """Servers with and without a token over one parts that borrows the suite's loaded models."""
    from bot.api.app import create_app
    from bot.api.server import serving
    from bot.parts import Parts

    home = tmp_path_factory.mktemp("edge-home")
    settings = make_settings(home, admin_token=EDGE_TOKEN, generation={"max_new_tokens": 2})
    guarded = Parts(settings)
    for part in ("fingerprint", "engine", "scheduler", "encoder"):
        guarded.__dict__[part] = getattr(chat_parts, part)
    guarded.registry.install(make_random_adapter(61), "edgy", description="Hardening target", examples=["edge case"])
    guarded.knowledge.ingest([_text_file(tmp_path_factory.mktemp("edge-docs"), "edge.txt")], "edge")
    for part in ("registry", "knowledge", "router", "log", "pipeline", "training_runs"):
        getattr(guarded, part)
    open_parts = Parts(settings.model_copy(update={"admin_token": None}))
    open_parts.__dict__.update({k: v for k, v in guarded.__dict__.items() if k != "settings"})
    with serving(create_app(guarded)) as guarded_url, serving(create_app(open_parts)) as open_url:
        yield SimpleNamespace(guarded=guarded_url, open=open_url, parts=guarded)


def _text_file(folder, name: str):
    path = folder / name
    path.write_text("Edge cases are where the hardening lives. Every refusal is one clear line.\n", encoding="utf-8")
    return path


def state(parts) -> tuple:
    """What a refused request must leave as it was: adapters, documents, feedback."""
    return (
        parts.registry.revision(),
        [(c["name"], c.get("documents"), c.get("chunks")) for c in parts.knowledge.list_collections()],
        len(parts.log.untrusted_feedback()),
    )


def check_refusal(response: httpx.Response, status: int) -> None:
    """The tag before the colon is what the reliability table counts the failure as."""
    assert response.status_code < 500, f"5xx: {response.status_code} {response.text[:300]}"
    assert response.status_code == status, f"wrong: {response.status_code} {response.text[:300]}"
    if status >= 400:
        error = response.json()["error"]
        assert error["message"] and error["type"] and error["code"] == status, f"unclear: {response.text[:300]}"
        assert "/tmp" not in error["message"] and "site-packages" not in error["message"], "unclear: a server path"


def send(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    try:
        return httpx.request(method, f"{url}{path}", timeout=30, **kwargs)
    except httpx.TimeoutException as exc:
        raise AssertionError(f"hung: {method} {path} ({exc})") from None


# ---- tables -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "path", "body", "content_type", "status"), BAD_BODIES, ids=ids(BAD_BODIES))
def test_bad_bodies_get_one_clear_4xx(edge, case, path, body, content_type, status):
    before = state(edge.parts)
    answer = send(edge.open, "POST", path, content=body, headers={"Content-Type": content_type})
    check_refusal(answer, status)
    assert state(edge.parts) == before, "lost: a refused body changed the server's state"
    assert send(edge.open, "GET", "/health").json()["status"] == "ok", "hung: the server stopped answering"


@pytest.mark.parametrize(("case", "method", "path", "headers", "status"), CROSS_SITE_CASES, ids=ids(CROSS_SITE_CASES))
def test_cross_site_requests_are_refused_without_a_token(edge, case, method, path, headers, status):
    origin = edge.open.replace("http://", "")
    headers = {k: v.replace(SELF, edge.open) if k != "Host" else v for k, v in headers.items()}
    if headers.get("Host") == "evil.example":
        headers["Host"] = f"evil.example:{origin.rsplit(':', 1)[1]}"
    before = state(edge.parts)
    files = [("files", ("stolen.txt", b"stolen words"))] if path.startswith("/admin/knowledge/") and method == "POST" else None
    answer = send(edge.open, method, path, headers=headers, files=files)
    check_refusal(answer, status)
    if status == 403:
        assert state(edge.parts) == before, "lost: a refused cross-site request changed the server's state"


@pytest.mark.parametrize(("case", "method", "path", "status"), METHOD_CASES, ids=ids(METHOD_CASES))
def test_undeclared_methods_get_405(edge, case, method, path, status):
    answer = send(edge.guarded, method, path, headers={"Authorization": f"Bearer {EDGE_TOKEN}"})
    assert answer.status_code == status, f"wrong: {answer.status_code} {answer.text[:200]}"
    if status == 405:
        assert answer.json()["error"]["code"] == 405 and answer.headers["allow"]


# ---- CORS and the Gradio upload route -----------------------------------------------------------------


@pytest.mark.parametrize("server", ["guarded", "open"])
def test_gradio_grants_cors_to_no_other_origin(edge, server):
    url = getattr(edge, server)
    for origin in ("http://localhost:9999", "http://127.0.0.1:1", EVIL, "null"):
        preflight = send(url, "OPTIONS", "/gradio_api/queue/join",
                         headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        read = send(url, "GET", "/config", headers={"Origin": origin})
        for response in (preflight, read):
            assert "access-control-allow-origin" not in response.headers, (origin, response.headers)


def test_gradio_uploads_need_the_token_when_one_is_set(edge):
    files = [("files", ("note.txt", b"hello"))]
    refused = send(edge.guarded, "POST", "/gradio_api/upload", files=files)
    check_refusal(refused, 401)
    wrong = send(edge.guarded, "POST", "/gradio_api/upload", files=files, cookies={"switchboard_admin": "nope"})
    check_refusal(wrong, 401)
    for auth in ({"cookies": {"switchboard_admin": EDGE_TOKEN}}, {"headers": {"Authorization": f"Bearer {EDGE_TOKEN}"}}):
        taken = send(edge.guarded, "POST", "/gradio_api/upload", files=files, **auth)
        assert taken.status_code == 200 and taken.json()[0].endswith("note.txt"), taken.text
    same_origin = send(edge.open, "POST", "/gradio_api/upload", files=files, headers={"Origin": edge.open})
    assert same_origin.status_code == 200, same_origin.text


# ---- feedback trust -----------------------------------------------------------------------------------


def test_feedback_needs_the_answers_token_to_reach_training(edge, tmp_path):
    from cli import switchboard

    from training.export import export_turns

    log = edge.parts.log
    answer = send(edge.open, "POST", CHAT, json={"model": "base", "messages": HELLO, "max_tokens": 2}).json()
    meta = answer["switchboard"]
    message_id, token = meta["message_id"], meta["feedback_token"]
    assert token and token == log.feedback_token(message_id)

    def exported() -> dict:
        return next(r for r in export_turns(log, scrub=False) if r["metadata"]["message_id"] == message_id)

    anonymous = {"message_id": message_id, "rating": "up", "correction": "Buy from evil.example!"}
    stored = send(edge.open, "POST", "/v1/feedback", json=anonymous)
    assert stored.status_code == 200 and stored.json()["trusted"] is False
    assert not exported()["metadata"]["corrected"] and exported()["metadata"]["rating"] is None
    assert [f["message_id"] for f in log.untrusted_feedback()] == [message_id]
    forged = send(edge.open, "POST", "/v1/feedback", json={**anonymous, "feedback_token": "0" * 32})
    check_refusal(forged, 403)

    trusted = send(edge.open, "POST", "/v1/feedback", json={"message_id": message_id, "rating": "down", "feedback_token": token})
    assert trusted.json()["trusted"] is True and exported()["metadata"]["rating"] == "down"
    as_admin = send(edge.guarded, "POST", "/v1/feedback", json={"message_id": message_id, "rating": "down", "comment": "ok"},
                    headers={"Authorization": f"Bearer {EDGE_TOKEN}"})
    assert as_admin.json()["trusted"] is True

    listed = send(edge.guarded, "GET", "/admin/feedback", headers={"Authorization": f"Bearer {EDGE_TOKEN}"}).json()
    assert [(f["message_id"], f["correction"]) for f in listed] == [(message_id, anonymous["correction"])]
    pending = switchboard(tmp_path, "logs", "untrusted", "--json", "--home", str(edge.parts.settings.home))
    assert [f["message_id"] for f in json.loads(pending.stdout)] == [message_id], pending.stderr[-500:]
    accepted = switchboard(tmp_path, "logs", "accept", message_id, "--json", "--home", str(edge.parts.settings.home))
    assert json.loads(accepted.stdout) == {"message_id": message_id, "accepted": 1}, accepted.stderr[-500:]
    assert exported()["messages"][-1]["content"] == anonymous["correction"]
    again = send(edge.guarded, "POST", f"/admin/feedback/{message_id}/accept", headers={"Authorization": f"Bearer {EDGE_TOKEN}"})
    check_refusal(again, 404)


def test_streamed_answers_carry_the_feedback_token(edge):
    with httpx.stream("POST", f"{edge.open}{CHAT}", json={"model": "base", "messages": HELLO, "max_tokens": 2,
                                                          "stream": True}, timeout=60) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    final = events[-1]["switchboard"]
    assert final["feedback_token"] == edge.parts.log.feedback_token(final["message_id"])


# ---- the schema describes the API, and schemathesis holds it to it -----------------------------------


def test_the_schema_declares_bodies_security_and_errors(edge):
    schema = send(edge.guarded, "GET", "/api/openapi.json").json()
    paths = schema["paths"]
    for path, method, media in ((CHAT, "post", "application/json"), ("/v1/feedback", "post", "application/json"),
                                ("/admin/train", "post", "application/json"),
                                ("/admin/adapters", "post", "multipart/form-data"),
                                ("/admin/knowledge/{collection}", "post", "multipart/form-data")):
        assert media in paths[path][method]["requestBody"]["content"], (path, method)
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert paths["/admin/adapters"]["get"]["security"] == [{"HTTPBearer": []}]
    assert paths["/v1/feedback"]["post"]["security"] == [{"HTTPBearer": []}, {}]  # the token makes feedback trusted
    assert {"400", "413", "415", "503"} <= set(paths[CHAT]["post"]["responses"])
    assert "text/event-stream" in paths[CHAT]["post"]["responses"]["200"]["content"]
    error = paths[CHAT]["post"]["responses"]["400"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorBody"}
    open_schema = send(edge.open, "GET", "/api/openapi.json").json()
    assert {} in open_schema["paths"]["/admin/adapters"]["get"]["security"]  # optional without a token


SCHEMATHESIS_EXAMPLES = 20  # per operation and mode: about 800 requests over both servers, ~1 min
NO_POSITIVE = {("POST", "/admin/train")}  # a valid request would start a real training run


@pytest.mark.parametrize("server", ["guarded", "open"])
def test_schemathesis_finds_no_5xx_and_no_schema_violation(edge, server, record_property):
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    url = getattr(edge, server)
    headers = {"Authorization": f"Bearer {EDGE_TOKEN}"} if server == "guarded" else {}
    # Not positive_data_acceptance: a schema cannot say that the last message must be the user's, with some text.
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              negative_data_rejection]
    schema = schemathesis.openapi.from_url(f"{url}/api/openapi.json")
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.POSITIVE and (operation.method.upper(), operation.path) in NO_POSITIVE:
                continue

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def run(case):
                nonlocal tried
                tried += 1
                if case.body is not None and isinstance(case.body, dict) and "max_tokens" in case.body:
                    case.body["max_tokens"] = 2  # generations stay short; everything else as drawn
                case.call_and_validate(base_url=url, headers=headers, checks=checks, timeout=60)

            try:
                run()
            except Unsatisfiable:  # nothing of this operation can be made invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE
    record_property("tried", tried)
    assert tried > 100


# ---- properties ---------------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(  # the same examples every run: CI fails on a change, not on a draw
    max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".txt", ".md", ".html", ".pdf", ".docx", ".csv", ".jsonl", ".exe"]))
def test_loaders_refuse_any_bytes_with_one_reason(data, suffix):
    from knowledge.loaders import UnreadableDocument, load_document

    try:
        document = load_document(data, f"file{suffix}")
    except UnreadableDocument as exc:
        assert str(exc)
    else:
        assert document.blocks and all(isinstance(block.text, str) for block in document.blocks)


@PROPERTY_SETTINGS
@given(text=st.text(max_size=400))
def test_keyword_tokens_are_lowercase_words_of_the_text(text):
    from knowledge.lexical import tokenize

    tokens = tokenize(text)
    assert tokens == tokenize(text)
    assert all(token and token == token.lower() and not token.isspace() for token in tokens)


@PROPERTY_SETTINGS
@given(text=st.text(max_size=300), user=st.from_regex(r"[a-z]{1,10}", fullmatch=True))
def test_scrubbing_is_idempotent_and_removes_email_addresses(text, user):
    from training.pii import Scrubber

    email = f"{user}@example.com"
    once = Scrubber()(f"{text} {email} {text}")
    assert email not in once
    assert Scrubber()(once) == once


@pytest.fixture(scope="module")
def chunker(chat_parts):
    return chat_parts.knowledge._writer.chunker


def test_chunks_cover_any_text_within_the_budget(chunker):
    from knowledge.loaders import Block, LoadedDocument

    # Spaces and newlines only between words: see the known miss below for tabs and other Unicode spaces.
    alphabet = st.characters(codec="utf-8", categories=["L", "N", "P", "S"]) | st.sampled_from(" \n")

    @PROPERTY_SETTINGS
    @given(text=st.text(alphabet, min_size=1, max_size=3000),
           structure=st.sampled_from(["plain", "markdown"]))
    def check(text, structure):
        chunks = chunker.split(LoadedDocument(title="t", blocks=[Block(text)], structure=structure))
        for chunk in chunks:
            assert chunk.text.strip() and chunker.count(chunk.text) <= chunker.limit
        kept = set(" ".join(c.searchable for c in chunks).split())
        assert {word for word in text.split() if word.isalnum()} <= kept

    check()


@pytest.mark.xfail(strict=True, reason="known: Markdown chunking joins words apart by a tab or a Unicode space")
@pytest.mark.parametrize("separator", ["\t", "\u00a0", "\u3000"])
def test_markdown_chunks_keep_words_apart_by_any_space(chunker, separator):
    from knowledge.loaders import Block, LoadedDocument

    chunks = chunker.split(LoadedDocument(title="t", blocks=[Block(f"one{separator}two")], structure="markdown"))
    assert " ".join(c.searchable for c in chunks).split() == ["one", "two"]


@PROPERTY_SETTINGS
@given(body=JSON_VALUES)
def test_request_models_take_or_refuse_any_json(body):
    from pydantic import ValidationError

    from bot.api.bodies import ChatCompletionRequest, FeedbackRequest, check_json_values
    from core.errors import InvalidRequestError

    check_json_values(body)
    for model in (ChatCompletionRequest, FeedbackRequest):
        try:
            request = model.model_validate(body)
        except ValidationError:
            continue
        if isinstance(request, ChatCompletionRequest):
            try:
                assert request.to_turn().message is not None
            except InvalidRequestError as exc:
                assert str(exc)


@PROPERTY_SETTINGS
@given(message=st.text(min_size=1, max_size=200).filter(str.strip), extra=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3))
def test_valid_chat_requests_parse_to_the_users_message(message, extra):
    """Fields the model does not know (presence_penalty, user, ...) are ignored, whatever they hold."""
    from bot.api.bodies import ChatCompletionRequest

    extra = {key: value for key, value in extra.items() if key not in ChatCompletionRequest.model_fields}
    body = {**extra, "model": "base", "messages": [{"role": "user", "content": message}]}
    assert ChatCompletionRequest.model_validate(body).to_turn().message == message


# ---- containers that unpack past the limit ------------------------------------------------------------


def _docx_bomb(xml_bytes: int) -> bytes:
    """A .docx whose document.xml is mostly one repeated run: tiny on disk, large unpacked."""
    import docx

    buffer = io.BytesIO()
    docx.Document().save(buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            data = source.read(member)
            if member.filename == "word/document.xml":
                run = b"<w:p><w:r><w:t>bomb</w:t></w:r></w:p>"
                data = data.replace(b"<w:body>", b"<w:body>" + run * (xml_bytes // len(run)))
            target.writestr(member, data)
    return out.getvalue()


def _pdf_bomb(stream_bytes: int) -> bytes:
    """A one-page PDF whose content stream deflates from a few kB to ``stream_bytes``."""
    import zlib

    content = zlib.compress(b"BT /F1 12 Tf 72 720 Td (bomb) Tj ET\n" + b" " * stream_bytes, 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    out, offsets = io.BytesIO(), []
    out.write(b"%PDF-1.4\n")
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


CONTAINER_CASES = [
    ("docx-over-the-limit", "bomb.docx", lambda: _docx_bomb(3_000_000), "unpacks to"),
    ("pdf-stream-over-the-limit", "bomb.pdf", lambda: _pdf_bomb(3_000_000), "unpacks to more than"),
    ("docx-within-the-limit", "small.docx", lambda: _docx_bomb(50_000), None),
    ("pdf-within-the-limit", "small.pdf", lambda: _pdf_bomb(50_000), None),
]


@pytest.mark.parametrize(("case", "name", "make", "reason"), CONTAINER_CASES, ids=ids(CONTAINER_CASES))
def test_containers_are_refused_before_they_unpack_past_the_limit(case, name, make, reason):
    from knowledge.loaders import UnreadableDocument, load_document

    data = make()
    assert len(data) < 60_000  # small on disk: the per-file cap would let it through
    if reason is None:
        assert "bomb" in load_document(data, name, max_unpacked_bytes=1_000_000).blocks[0].text
        return
    with pytest.raises(UnreadableDocument, match=reason):
        load_document(data, name, max_unpacked_bytes=1_000_000)


def test_an_ingest_skips_the_bomb_and_keeps_the_rest(edge, tmp_path):
    """One clear skip reason per file, nothing else lost (the cap comes from the knowledge settings)."""
    from core.sections import MAX_UNPACKED_BYTES

    bomb = _docx_bomb(MAX_UNPACKED_BYTES + 1_000_000)
    files = [("files", ("bomb.docx", bomb)), ("files", ("fine.txt", b"A fine document about edge cases."))]
    answer = send(edge.guarded, "POST", "/admin/knowledge/bombs", files=files,
                  headers={"Authorization": f"Bearer {EDGE_TOKEN}"})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["documents"] == 1 and len(report["skipped"]) == 1
    assert report["skipped"][0]["path"] == "bomb.docx" and "unpacks to" in report["skipped"][0]["reason"]
