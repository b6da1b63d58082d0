"""The knowledge base against real files of every type, real embeddings and a real Chroma store."""

from __future__ import annotations

import io
import json
import os
import shutil

import pytest

from core.errors import LockedError, NotFoundError, SwitchboardError
from core.settings import load_settings
from knowledge.articles import referenced_articles
from knowledge.chunking import Chunker
from knowledge.knowledge_base import KnowledgeBase
from knowledge.loaders import load_text

# ---- sample files, made here -------------------------------------------------------------------


def make_pdf(pages: list[str], title: str) -> bytes:
    """A real multi-page PDF with Helvetica text, written by hand so no PDF writer is needed."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    page_ids = [5 + 2 * i for i in range(len(pages))]
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        f"<< /Title ({escape(title)}) >>".encode(),
    ]
    for page_id, text in zip(page_ids, pages):
        lines = " T* ".join(f"({escape(line)}) Tj" for line in text.split("\n"))
        stream = f"BT /F1 11 Tf 14 TL 72 740 Td {lines} ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {page_id + 1} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 4 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def encrypt_pdf(data: bytes, password: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def make_docx(path) -> None:
    import docx

    document = docx.Document()
    document.core_properties.title = "Security Policy"
    document.add_heading("Security Policy", level=1)
    document.add_paragraph("Passwords must be rotated every 90 days and never shared by email.")
    document.add_heading("Laptops", level=2)
    document.add_paragraph("Laptops are encrypted with full-disk encryption before they leave the office.")
    table = document.add_table(rows=2, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "Device", "Owner"
    table.rows[1].cells[0].text, table.rows[1].cells[1].text = "Laptop", "The IT helpdesk in building C"
    document.save(path)


GUIDE_MD = """# Outdoor Shop Guide

Welcome to the outdoor shop.

## Returns

Unused items can be returned within 30 days of delivery with the receipt.

### Refunds

Refunds reach the original payment method within 5 business days after the parcel arrives.

## Warranty

Backpacks carry a three year warranty against seam failures.
"""

PAGE_HTML = """<!doctype html><html><head><title>Store Hours</title>
<style>.banner { color: red; } .styleword {}</style>
<script>var trackingword = "zyxwvu"; function go() {}</script></head>
<body><header><a href="/">Home</a> headerword</header>
<nav><ul><li>Shop</li><li>navlinkword</li></ul></nav>
<main><h1>Opening hours</h1><p>The Oslo store opens at <b>9 am</b> and closes at 6 pm on weekdays.</p>
<h2>Holidays</h2><p>On public holidays the Oslo store stays closed.</p></main>
<footer>Copyright footerword</footer></body></html>"""

CIVIL_CODE = "Civil Code (excerpt)\n\n" + "\n\n".join(
    f"Article {n}\n{text}"
    for n, text in [
        (1, "This code governs civil relations between persons."),
        (2, "Civil rights are exercised in good faith."),
        (11, "Legal capacity begins at birth and ends at death."),
        (12, "A person attains majority at the age of eighteen years."),
        (13, "A minor who has reached seven years of age has limited capacity to act."),
        (14, "Article 12 applies equally to persons of every nationality."),
    ]
)

CHINESE_STATUTE = """# 民法（節錄）

第一章 通則

第一條 民事，法律所未規定者，依習慣；無習慣者，依法理。

第二條 民事所適用之習慣，以不背於公共秩序或善良風俗者為限。

第二章 人

第十二條 滿十八歲為成年。

第十三條 未滿七歲之未成年人，無行為能力。
"""

RETURNS_ZH = "退貨政策\n\n商品可在收到後三十日內退貨。退款將在七個工作日內退回原付款方式。請保留收據與原包裝。"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("library")
    (folder / "guide.md").write_text(GUIDE_MD, encoding="utf-8")
    (folder / "page.html").write_text(PAGE_HTML, encoding="utf-8")
    (folder / "handbook.pdf").write_bytes(
        make_pdf(
            [
                "Employee Handbook\nWelcome to the company.",
                "Holidays\nStaff receive 25 days of paid leave per year.",
                "Expenses\nTravel expenses are reimbursed within 14 days.",
            ],
            title="Employee Handbook",
        )
    )
    make_docx(folder / "policy.docx")
    (folder / "faq.csv").write_text(
        'question,answer\nDo you ship abroad?,"Yes, we ship to 40 countries."\n'
        "Can I pay by invoice?,Only business customers can pay by invoice.\n",
        encoding="utf-8",
    )
    (folder / "catalog.jsonl").write_text(
        "\n".join(
            json.dumps(
                {
                    "question": f"What is the warranty on model KX-{code}?",
                    "answer": f"Model KX-{code} has a {months}-month warranty.",
                }
            )
            for code, months in [(4821, 18), (4812, 24), (1482, 6), (8421, 36), (4128, 12)]
        ),
        encoding="utf-8",
    )
    (folder / "civil_code.txt").write_text(CIVIL_CODE, encoding="utf-8")
    (folder / "民法.md").write_text(CHINESE_STATUTE, encoding="utf-8")
    (folder / "退貨政策.txt").write_text(RETURNS_ZH, encoding="utf-8")
    (folder / "invoices_gbk.txt").write_bytes("发票将在付款后三天内通过电子邮件发送给客户。".encode("gbk"))
    (folder / "cafe_cp1252.txt").write_bytes("Le café crème coûte trois euros à Montréal.".encode("cp1252"))
    return folder


@pytest.fixture(scope="module")
def docs(tmp_path_factory, encoder, library):
    settings = load_settings({"home": tmp_path_factory.mktemp("kb-home")}, environ={})
    kb = KnowledgeBase(settings, encoder)
    report = kb.ingest(sorted(library.iterdir()), "docs")
    yield kb, report
    kb.close()


def top(kb: KnowledgeBase, query: str, **kwargs):
    passages = kb.retrieve(query, ["docs"], **kwargs)
    assert passages, f"nothing retrieved for {query!r}"
    return passages[0]


# ---- ingestion -----------------------------------------------------------------------------------


def test_every_file_type_is_ingested_with_metadata(docs, library):
    kb, report = docs
    assert report.skipped == []
    assert report.documents == len(list(library.iterdir()))
    listed = {d["source"]: d for d in kb.list_documents("docs")}
    assert set(listed) == {p.name for p in library.iterdir()}
    assert sum(d["chunks"] for d in listed.values()) == report.chunks
    assert kb.list_collections() == [{"name": "docs", "documents": report.documents, "chunks": report.chunks}]
    assert listed["handbook.pdf"]["title"] == "Employee Handbook"
    assert listed["page.html"]["title"] == "Store Hours"
    assert listed["policy.docx"]["title"] == "Security Policy"


def test_markdown_chunks_carry_their_heading_path(docs):
    passage = top(docs[0], "How long until my refund reaches my card?")
    assert passage.source == "guide.md"
    assert (passage.section, passage.title) == ("Refunds", "Outdoor Shop Guide")
    assert passage.text == "Refunds reach the original payment method within 5 business days after the parcel arrives."


def test_html_keeps_the_visible_text_only(docs):
    kb = docs[0]
    passage = top(kb, "When does the Oslo store open?")
    assert passage.source == "page.html" and "9 am" in passage.text
    everything = " ".join(
        p.text for p in kb.retrieve("Oslo store", ["docs"], k=20, min_score=0.0, sources=["page.html"])
    )
    assert "closes at 6 pm" in everything
    for hidden in ("zyxwvu", "trackingword", "styleword", "navlinkword", "headerword", "footerword"):
        assert hidden not in everything
        assert kb.retrieve(hidden, ["docs"], mode="lexical") == []


def test_pdf_passages_cite_their_page(docs):
    passage = top(docs[0], "How many days of paid leave do staff get?")
    assert (passage.source, passage.page, passage.section) == ("handbook.pdf", 2, "page 2")
    assert "25 days" in passage.text


def test_docx_paragraphs_and_tables(docs):
    kb = docs[0]
    passage = top(kb, "How often must passwords be rotated?")
    assert passage.source == "policy.docx" and "90 days" in passage.text
    passage = top(kb, "Who owns the laptops? IT helpdesk building")
    assert passage.source == "policy.docx" and "building C" in passage.text


def test_faq_rows_keep_question_with_answer(docs):
    passage = top(docs[0], "Do you deliver to other countries?")
    assert passage.source == "faq.csv"
    assert passage.text == "Q: Do you ship abroad?\nA: Yes, we ship to 40 countries."
    passage = top(docs[0], "warranty of KX-8421")
    assert passage.source == "catalog.jsonl" and "KX-8421 has a 36-month" in passage.text


def test_non_utf8_text_is_detected_and_decoded(docs):
    passage = top(docs[0], "發票什麼時候發送")
    assert passage.source == "invoices_gbk.txt" and "电子邮件" in passage.text
    passage = top(docs[0], "café crème Montréal")
    assert passage.source == "cafe_cp1252.txt" and "coûte" in passage.text


# ---- retrieval -----------------------------------------------------------------------------------


def test_chinese_document_found_by_chinese_query(docs):
    # A Simplified query against a Traditional document.
    passage = top(docs[0], "退货以后多久能拿到退款？")
    assert passage.source == "退貨政策.txt"
    assert "七個工作日" in passage.text


def test_statute_found_by_article_number(docs):
    kb = docs[0]
    passage = top(kb, "What does Article 12 say?")
    assert (passage.source, passage.section) == ("civil_code.txt", "Article 12")
    assert passage.text == "A person attains majority at the age of eighteen years."
    for query in ("第十二條規定什麼？", "第12条"):
        passages = kb.retrieve(query, ["docs"], sources=["民法.md"])
        assert (passages[0].section, passages[0].text) == ("第十二條", "第十二條 滿十八歲為成年。")


def test_article_references_normalize_across_numerals():
    assert referenced_articles("see Art. 5, Article IV, § 3 and 第十二條之一 or 第一百零三条") == [
        "5",
        "4",
        "3",
        "12-1",
        "103",
    ]
    assert referenced_articles("a particle 5 and article mix") == []


def test_nothing_relevant_is_an_empty_list(docs):
    kb = docs[0]
    assert kb.retrieve("What is the boiling point of mercury on Jupiter?", ["docs"]) == []
    assert kb.retrieve("今天天气怎么样", ["docs"]) == []
    assert kb.retrieve("   ", ["docs"]) == []


def test_every_passage_carries_a_citation(docs):
    passages = docs[0].retrieve("warranty", ["docs"], k=5, min_score=0.0)
    assert 1 <= len(passages) <= 5
    for p in passages:
        assert p.id.startswith(f"docs:{p.source}:") and p.source and p.text and p.collection == "docs"
        assert 0.0 <= p.score <= 1.0
    strict = docs[0].retrieve("warranty", ["docs"], k=2, min_score=0.6)
    assert 1 <= len(strict) <= 2 and all(p.score >= 0.6 for p in strict)


def test_hybrid_finds_exact_codes(docs):
    passage = top(docs[0], "How long is the warranty on KX-4812?")
    assert "KX-4812 has a 24-month" in passage.text


def test_collections_are_separate(docs, library, tmp_path):
    kb = docs[0]
    (tmp_path / "lab.md").write_text("# Lab rules\n\nGoggles are worn at all times in the chemistry lab.", "utf-8")
    assert kb.ingest([tmp_path / "lab.md"], "lab").documents == 1
    query = "Are goggles required in the chemistry lab?"
    assert {p.collection for p in kb.retrieve(query, ["lab"], min_score=0.0)} == {"lab"}
    assert all(p.source != "lab.md" for p in kb.retrieve(query, ["docs"], min_score=0.0))
    assert kb.retrieve(query, ["docs", "lab"])[0].source == "lab.md"
    assert kb.retrieve(query, ["no-such-collection"]) == []
    with pytest.raises(NotFoundError):
        kb.search(query, ["no-such-collection"])
    assert {c["name"] for c in kb.list_collections()} == {"docs", "lab"}


# ---- bad input -----------------------------------------------------------------------------------


def test_bad_files_are_skipped_with_reasons_and_the_batch_goes_on(tmp_path, encoder):
    bad = tmp_path / "bad"
    bad.mkdir()
    files = {
        "empty.txt": b"",
        "blank.md": b"  \n\n \t\n",
        "image.txt": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(400),
        "locked.pdf": encrypt_pdf(make_pdf(["Secret salaries"], "Secret"), "hunter2"),
        "broken.pdf": b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R",
        "broken.docx": b"PK\x03\x04 this is not really a zip archive",
        "data.xyz": b"some text in an unknown format",
        "big.txt": b"large file. " * 600,
        "bad.jsonl": b'{"question": "q1", "answer": "a1"}\n{not json}\n',
        "good.md": "# Good\n\nThe good document mentions the aurora borealis.".encode(),
    }
    for name, data in files.items():
        (bad / name).write_bytes(data)
    settings = load_settings({"home": tmp_path / "home", "knowledge": {"max_file_bytes": 5000}}, environ={})
    with KnowledgeBase(settings, encoder) as kb:
        report = kb.ingest(sorted(bad.iterdir()) + [tmp_path / "missing.txt"], "bad")
        reasons = {os.path.basename(item["path"]): item["reason"] for item in report.skipped}
        assert report.documents == 1 and set(reasons) == set(files) - {"good.md"} | {"missing.txt"}
        expected = {
            "empty.txt": "empty",
            "blank.md": "empty",
            "image.txt": "binary",
            "locked.pdf": "encrypted",
            "broken.pdf": "corrupt PDF",
            "broken.docx": "not a readable .docx",
            "data.xyz": "unsupported file type",
            "big.txt": "over the 5 kB limit",
            "bad.jsonl": "line 2: not valid JSON",
            "missing.txt": "no such file",
        }
        for name, fragment in expected.items():
            assert fragment in reasons[name], (name, reasons[name])
        assert [d["source"] for d in kb.list_documents("bad")] == ["good.md"]
        assert kb.list_collections() == [{"name": "bad", "documents": 1, "chunks": report.chunks}]

        # A replacement that turns out broken is skipped and the previous version stays whole.
        (bad / "good.md").write_bytes(b"\x00\x01\x02 binary now")
        again = kb.ingest([bad / "good.md"], "bad")
        assert again.documents == 0 and "binary" in again.skipped[0]["reason"]
        assert top_source(kb, "aurora borealis", "bad") == "good.md"
        assert kb.list_collections()[0]["chunks"] == report.chunks


def top_source(kb: KnowledgeBase, query: str, collection: str) -> str:
    passages = kb.retrieve(query, [collection])
    return passages[0].source if passages else ""


def test_a_batch_of_only_bad_files_creates_no_collection(tmp_path, encoder):
    (tmp_path / "empty.txt").write_bytes(b"")
    with KnowledgeBase(load_settings({"home": tmp_path / "home"}, environ={}), encoder) as kb:
        report = kb.ingest([tmp_path / "empty.txt"], "nothing")
        assert report.documents == 0 and len(report.skipped) == 1
        assert kb.list_collections() == []


# ---- replace, remove, restart, lock --------------------------------------------------------------


def _notes(version: str) -> str:
    middle = {"v1": "The kiln in room 4 is fired on Tuesdays.", "v2": "The kiln in room 4 is fired on Fridays."}[
        version
    ]
    return (
        "# Studio notes\n\n## Clay\nStoneware clay is stored in the cellar beside the glaze buckets.\n\n"
        f"## Kiln\n{middle}\n\n## Wheels\nPottery wheels are cleaned with a sponge after every class.\n"
    )


def test_reingest_replaces_remove_deletes_and_restart_keeps_both_indexes_consistent(tmp_path, encoder):
    settings = load_settings({"home": tmp_path / "home"}, environ={})
    notes = tmp_path / "notes.md"
    notes.write_text(_notes("v1"), encoding="utf-8")
    (tmp_path / "other.md").write_text("# Other\n\nThe library lends books for three weeks.", encoding="utf-8")
    with KnowledgeBase(settings, encoder) as kb:
        first = kb.ingest([notes, tmp_path / "other.md"], "studio")
        assert (first.documents, first.chunks) == (2, 4)
        ids_v1 = {p.id for p in kb.retrieve("studio", ["studio"], k=10, min_score=0.0, sources=["notes.md"])}

        assert kb.ingest([notes], "studio").unchanged == ["notes.md"]

        notes.write_text(_notes("v2"), encoding="utf-8")
        second = kb.ingest([notes], "studio")
        assert (second.documents, second.chunks, second.unchanged) == (1, 3, [])
        ids_v2 = {p.id for p in kb.retrieve("studio", ["studio"], k=10, min_score=0.0, sources=["notes.md"])}
        assert len(ids_v1 & ids_v2) == 2 and len(ids_v2) == 3  # unchanged sections keep their ids
        assert kb.retrieve("Tuesdays", ["studio"], mode="lexical") == []
        assert "Fridays" in kb.retrieve("When is the kiln fired?", ["studio"])[0].text
        assert kb.list_collections() == [{"name": "studio", "documents": 2, "chunks": 4}]
        lexical_before_remove = tmp_path / "lexical-before-remove"
        shutil.copytree(settings.chroma_dir / "lexical" / "studio", lexical_before_remove)

        assert kb.remove("notes.md", "studio") == {"collection": "studio", "source": "notes.md", "chunks": 3}
        assert kb.retrieve("Fridays kiln", ["studio"], mode="lexical") == []
        assert all(p.source == "other.md" for p in kb.retrieve("kiln", ["studio"], min_score=0.0))
        with pytest.raises(NotFoundError):
            kb.remove("notes.md", "studio")

    with KnowledgeBase(settings, encoder) as kb:  # a restart reads the saved lexical index
        assert kb.list_documents("studio")[0]["source"] == "other.md"
        assert kb.retrieve("books three weeks", ["studio"], mode="lexical")[0].source == "other.md"

    # A crash between the Chroma write and the lexical save leaves a stale index on disk: it is detected and rebuilt.
    shutil.rmtree(settings.chroma_dir / "lexical" / "studio")
    shutil.copytree(lexical_before_remove, settings.chroma_dir / "lexical" / "studio")
    with KnowledgeBase(settings, encoder, read_only=True) as reader:
        assert [d["source"] for d in reader.list_documents("studio")] == ["other.md"]
        assert reader.retrieve("Fridays kiln", ["studio"], mode="lexical") == []
    shutil.rmtree(settings.chroma_dir / "lexical")
    with KnowledgeBase(settings, encoder) as kb:
        assert kb.list_collections() == [{"name": "studio", "documents": 1, "chunks": 1}]
        assert kb.retrieve("library lends books", ["studio"], mode="lexical")[0].source == "other.md"


def test_one_writer_at_a_time_readers_welcome(tmp_path, encoder):
    settings = load_settings({"home": tmp_path / "home"}, environ={})
    (tmp_path / "a.md").write_text("# A\n\nThe harbour ferry leaves every twenty minutes.", encoding="utf-8")
    with KnowledgeBase(settings, encoder) as writer:
        writer.ingest([tmp_path / "a.md"], "travel")
        with pytest.raises(LockedError, match=rf"in use by another process \(pid {os.getpid()}\)"):
            KnowledgeBase(settings, encoder)
        with KnowledgeBase(settings, encoder, read_only=True) as reader:
            assert reader.search("How often does the ferry leave?", ["travel"])[0].source == "a.md"
            assert writer.ping() > 0 and reader.ping() > 0  # the embedded store answers a heartbeat too
            with pytest.raises(SwitchboardError, match="read-only"):
                reader.ingest([tmp_path / "a.md"], "travel")
    with KnowledgeBase(settings, encoder) as writer:  # released on close
        assert writer.list_collections()[0]["documents"] == 1


# ---- chunking ------------------------------------------------------------------------------------


def test_chunks_fit_the_token_budget_and_end_at_sentence_ends(encoder):
    chunker = Chunker(encoder.tokenizer, chunk_tokens=48, chunk_overlap=8, max_tokens=encoder.max_tokens)
    english = " ".join(f"Sentence number {i} talks about tents, stoves and sleeping bags." for i in range(60))
    chinese = "".join(f"第{i}句話說明退貨的規則。" if i % 2 else f"請問第{i}個包裹何時送達？" for i in range(80))
    for text in (english, chinese):
        chunks = chunker.split(load_text(text.encode(), "long.txt"))
        assert len(chunks) > 3
        assert all(chunker.count(c.text) <= 48 for c in chunks)
    assert all(c.text.endswith(("。", "？")) for c in chunks)


def test_two_files_of_one_name_are_two_documents_and_the_operator_is_told(tmp_path, encoder):
    """Two shops' warranty.md: the second is skipped with the reason; the same path updates; --replace replaces."""
    settings = load_settings({"home": tmp_path / "home"}, environ={})
    north, south = tmp_path / "north", tmp_path / "south"
    north.mkdir()
    south.mkdir()
    (north / "warranty.md").write_text("# Warranty\n\nNorth tents are covered for 2 years.", encoding="utf-8")
    (south / "warranty.md").write_text("# Warranty\n\nSouth tents are covered for 7 years.", encoding="utf-8")
    with KnowledgeBase(settings, encoder) as kb:
        assert kb.ingest([north / "warranty.md"], "shops").documents == 1
        clash = kb.ingest([south / "warranty.md"], "shops")
        assert clash.documents == 0 and len(clash.skipped) == 1
        reason = clash.skipped[0]["reason"]
        assert "different document named 'warranty.md'" in reason and "--replace" in reason
        assert str(north) not in reason  # server paths are not shown
        assert "North" in kb.retrieve("tent warranty", ["shops"], min_score=0.0)[0].text

        (north / "warranty.md").write_text("# Warranty\n\nNorth tents are covered for 3 years.", encoding="utf-8")
        assert kb.ingest([north / "warranty.md"], "shops").documents == 1  # the same path is a new version
        assert "3 years" in kb.retrieve("tent warranty", ["shops"], min_score=0.0)[0].text

        replaced = kb.ingest([south / "warranty.md"], "shops", replace=True)
        assert replaced.documents == 1 and not replaced.skipped
        assert "South" in kb.retrieve("tent warranty", ["shops"], min_score=0.0)[0].text

        upload = kb.ingest([north / "warranty.md"], "shops", uploaded=True)
        assert upload.documents == 0 and "replace=true" in upload.skipped[0]["reason"]
    with KnowledgeBase(settings, encoder) as kb:  # the origin survives a restart (and a rebuild from Chroma)
        shutil.rmtree(settings.chroma_dir / "lexical" / "shops")
        assert kb.ingest([north / "warranty.md"], "shops").skipped
