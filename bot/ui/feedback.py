"""Rating an answer (the chatbot's thumbs) and suggesting a correction of the last one, below the chat.

A rating given in the page is trusted: the page received the answer itself.
A correction is saved as a thumbs-down with the text the answer should have
been, which the next training run can learn from.
"""

from __future__ import annotations

import gradio as gr

from bot.pipeline import Pipeline
from bot.ui.guard import PRIVATE, user_errors


class Feedback:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def build(self, chatbot: gr.Chatbot, message_ids: gr.State) -> gr.Markdown:
        """The feedback status and the correction box, wired to ``chatbot``; returns the status, which a new chat clears."""
        status = gr.Markdown(elem_id="feedback-status")
        with gr.Accordion("Suggest a correction for the last answer", open=False):
            correction = gr.Textbox(label="What the answer should have said", lines=3, elem_id="correction")
            send_correction = gr.Button("Suggest a correction", elem_id="send-correction")
        chatbot.like(self.rate, [message_ids], [status], **PRIVATE)
        send_correction.click(self.correct, [correction, message_ids], [correction, status], **PRIVATE)
        return status

    @user_errors
    def rate(self, ids: list, data: gr.LikeData) -> str:
        index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
        message_id = ids[index] if ids and 0 <= index < len(ids) else None
        if message_id is None:
            return "Only answers can be rated."
        rating = "up" if data.liked is True or data.liked == "Like" else "down"
        self.pipeline.rate(message_id, rating)
        return f"Thanks: your rating ({'thumbs up' if rating == 'up' else 'thumbs down'}) is saved."

    @user_errors
    def correct(self, text: str, ids: list) -> tuple[str, str]:
        answered = [i for i in (ids or []) if i]
        if not answered:
            return text, "Ask something first: a correction applies to the last answer."
        if not (text or "").strip():
            return text, "Write what the answer should have said."
        self.pipeline.rate(answered[-1], "down", correction=text.strip())
        return "", "Thanks: your correction is saved for the next training run."
