"""What the UI shows, rendered as Markdown or a data frame from what the pipeline and the admin actions return.

Plain functions of plain data, so each can be read (and checked) apart from
the components that display it.
"""

from __future__ import annotations

import html
import re
from typing import Any

from bot.turn import TurnResult

SOURCE_PREVIEW_CHARS = 600
MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|~=$])")
VARIANTS = (("candidate", "candidate"), ("live", "live version"), ("base", "base"))
CHECK_NOTES = {
    "passed": "Every citation and fact of this answer was found in its sources.",
    "repaired": "Citations of this answer were corrected to the sources that hold its facts.",
    "replaced": "The generated answer stated something its sources do not hold, so the best-matching passage "
    "(or the assistant's hand-off) is shown instead.",
}


def plain(text: str) -> str:
    """Source text shown as written: a line of '---' in a document must not turn the next line into a heading."""
    return MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(text, quote=False))


def answer_note(result: TurnResult) -> dict[str, Any]:
    """The collapsed message under an answer: who answered, how sure the router was, and the sources."""
    who = f"{result.adapter} v{result.adapter_version}" if result.adapter else "base model"
    confidence = "chosen by you" if result.route_reason == "requested" else f"confidence {result.confidence:.2f}"
    if result.route_reason == "retrieval":
        confidence += ", chosen for its documents"
    count = len(result.sources)
    title = f"Answered by {who} · {confidence} · {count} source{'s' if count != 1 else ''}"
    body = "\n\n".join(_source_markdown(source) for source in result.sources) or "No sources were used for this answer."
    if result.route.retrieval:
        relevance = ", ".join(f"{plain(name)} {value:.2f}" for name, value in sorted(result.route.retrieval.items()))
        body = f"How well each assistant's documents answer this: {relevance}.\n\n{body}"
    checks = CHECK_NOTES.get(result.checks.action)
    if checks:
        body = f"{checks}\n\n{body}"
    return {"role": "assistant", "content": body, "metadata": {"title": title, "status": "done"}}


def _source_markdown(source: dict[str, Any]) -> str:
    """One numbered source: its document, section and score, then the start of its text as a quote."""
    section = f" — {plain(source['section'])}" if source.get("section") else ""
    text = source["text"].strip()
    if len(text) > SOURCE_PREVIEW_CHARS:
        text = text[:SOURCE_PREVIEW_CHARS].rstrip() + " …"
    quoted = "\n".join(f"> {plain(line)}" for line in text.splitlines() if line.strip())
    return f"**[{source['number']}] {plain(source['source'])}**{section} (score {source['score']:.2f})\n\n{quoted}"


def ingest_markdown(report: dict[str, Any], collection: str) -> str:
    """What an upload added to a collection, and each file left out with its reason."""
    lines = [f"Ingested {report['documents']} document(s), {report['chunks']} chunk(s) into **{collection}**."]
    lines += [f"- unchanged: {name}" for name in report.get("unchanged", [])]
    lines += [f"- skipped {item['path']}: {item['reason']}" for item in report["skipped"]]
    return "\n".join(lines)


def export_markdown(result: dict[str, Any]) -> str:
    """The files of an export with sizes and checksums, and what to run on the other side."""
    lines = [f"Exported **{result['adapter']}** v{result['version']} as {result['format']} ({result['seconds']} s):", ""]
    lines += [f"- `{f['path']}` {f['bytes'] / 1e6:,.1f} MB, sha256 `{f['sha256'][:16]}…`" for f in result["files"]]
    lines += ["", "Run it with:", "", "```", *result["usage"], "```"]
    return "\n".join(lines)


def dataset_markdown(card: dict[str, Any]) -> str:
    """What a run would train on, and what was left out and why, so filters can be checked before training."""
    counts = card["counts"]
    lines = [
        f"**{counts['read']}** read, **{counts['kept']} kept**: **{counts['train']}** for training, "
        f"**{counts['held_out']}** held out, plus **{counts['replay']}** general chats replayed.",
        "",
    ]
    lines += [f"- **warning**: {plain(warning)}" for warning in card.get("warnings", [])]
    lines += [f"- dropped {n}: {plain(reason)}" for reason, n in card["dropped"].items()] or ["- nothing dropped"]
    scrubbed = ", ".join(f"{n} {plain(kind)}" for kind, n in card["scrubbed"].items())
    lines.append(f"- personal data scrubbed: {scrubbed or 'none found'}")
    return "\n".join(lines)


def run_markdown(status: dict[str, Any]) -> str:
    """One line on where a run stands: state, phase, step of total, time left, latest losses; then any error."""
    parts = [f"Run `{status['run_id']}` of **{plain(status['adapter'])}**: **{status['state']}**"]
    if status["phase"]:
        parts.append(status["phase"])
    progress = status.get("progress")
    if progress:
        parts.append(f"step {progress['step']}/{progress['total']}")
        if status["phase"] == "training" and progress["eta_s"] is not None:
            parts.append(f"about {progress['eta_s']:.0f} s left")
        if progress["loss"] is not None:
            parts.append(f"loss {progress['loss']:.4f}")
        if progress["eval_loss"] is not None:
            parts.append(f"held-out loss {progress['eval_loss']:.4f}")
    line = " · ".join(parts)
    if status.get("outcome"):
        line = f"{line}\n\n{plain(status['outcome'])}"
    return f"{line}\n\n{plain(status['error'])}" if status.get("error") else line


def report_markdown(report: dict[str, Any] | None) -> str:
    """The candidate beside the live version and the base, then the gate's decision and whether it was deployed."""
    if not report or "evaluation" not in report:
        return ""
    evaluation = report["evaluation"]
    sections = {
        "held_out": evaluation["held_out"], "regression": evaluation["regression"], "golden": evaluation.get("golden") or {}
    }
    columns = [(key, label) for key, label in VARIANTS if any(key in section for section in sections.values())]
    rows = (
        ("held-out loss", "held_out", "loss", "{:.4f}"),
        ("held-out perplexity", "held_out", "perplexity", "{:.3f}"),
        ("golden pass rate", "golden", "pass_rate", "{:.0%}"),
        ("general perplexity", "regression", "perplexity", "{:.3f}"),
    )
    lines = ["| | " + " | ".join(label for _, label in columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for label, section, field, number in rows:
        if sections[section]:
            cells = [number.format(sections[section][key][field]) if key in sections[section] else "—" for key, _ in columns]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"General perplexity {evaluation['regression']['rise']:+.1%} against the base."]
    lines += _gate_lines(report)
    return "\n".join(lines)


def _gate_lines(report: dict[str, Any]) -> list[str]:
    gate = report.get("gate")
    if not gate:
        return []
    verdict = "passed" if gate["passed"] else "rejected"
    lines = ["", f"**Gate: {verdict}** (compared with the {dict(VARIANTS)[gate['compared_with']]}):", ""]
    lines += [f"- {plain(reason)}" for reason in gate["reasons"]]
    installed = report.get("installed")
    lines.append("")
    if installed:
        lines.append(f"Deployed **{plain(installed['name'])} v{installed['version']}**: it is served now.")
    else:
        lines.append("Not deployed: the live version is unchanged.")
    return lines


def loss_frame(status: dict[str, Any]):
    """The run's training loss per step, for the loss plot; typed even when empty, so the axes start out numeric."""
    import pandas as pd

    return pd.DataFrame(status.get("losses") or [], columns=["step", "loss"]).astype({"step": int, "loss": float})
