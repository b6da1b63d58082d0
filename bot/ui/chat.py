"""The Chat tab: ask, watch the answer stream in, open its sources; the feedback controls sit below.

Each answer is followed by a collapsed note naming the adapter that answered,
its confidence and the numbered sources, so a reader can check every [n].
"""

from __future__ import annotations

import gradio as gr

from bot.pipeline import Pipeline
from bot.turn import TurnRequest
from bot.ui.feedback import Feedback
from bot.ui.guard import PRIVATE
from bot.ui.views import answer_note
from core.errors import SwitchboardError


class Chat:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def adapter_choices(self) -> list[str]:
        """What a chat may ask for: the router's choice, the base model, or an enabled adapter by name."""
        return ["auto", "base", *(m.name for m in self.pipeline.adapters())]

    def build(self) -> gr.Dropdown:
        """The tab's components and events; returns the adapter choice, which other tabs and the page load refresh."""
        conversation = gr.State(None)
        message_ids = gr.State([])  # per chatbot message: the logged answer it belongs to, None for a question
        with gr.Row():
            adapter = gr.Dropdown(
                choices=self.adapter_choices(), value="auto", label="Adapter", scale=3, elem_id="adapter-select"
            )
            new = gr.Button("New conversation", scale=1, elem_id="new-conversation")
        chatbot = gr.Chatbot(label="Conversation", height=520, elem_id="chatbot", buttons=["copy"])
        with gr.Row():
            message = gr.Textbox(label="Message", placeholder="Ask a question…", scale=5, elem_id="message", autofocus=True)
            send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        feedback_status = Feedback(self.pipeline).build(chatbot, message_ids)

        inputs = [message, chatbot, adapter, conversation, message_ids]
        outputs = [message, chatbot, conversation, message_ids]
        send.click(self.respond, inputs, outputs, api_name="chat")
        message.submit(self.respond, inputs, outputs, **PRIVATE)
        fresh = [chatbot, conversation, message_ids, feedback_status, message]
        new.click(self.new_conversation, None, fresh, **PRIVATE)
        chatbot.clear(self.new_conversation, None, fresh, **PRIVATE)  # the bin icon starts over too, not only the view
        return adapter

    def respond(self, message: str, history: list[dict], adapter: str, conversation_id: str | None, ids: list):
        """Echo the question, stream the answer, then show the checked answer and its note."""
        history = list(history or [])
        ids = list(ids or [])
        try:
            turn = self.pipeline.prepare(TurnRequest(message or "", adapter or "auto", conversation_id))
        except SwitchboardError as exc:
            raise gr.Error(str(exc)) from None
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield "", history, conversation_id, ids
        stream = None
        text = ""
        try:
            stream = self.pipeline.stream(turn)  # a full queue is refused here, as a message like any other
            for piece in stream:
                text += piece
                history[-1] = {"role": "assistant", "content": text}
                yield "", history, conversation_id, ids
        except SwitchboardError as exc:
            raise gr.Error(str(exc)) from None
        finally:
            if stream is not None:
                stream.cancel()  # a closed tab stops the generator here: its row leaves the batch (a no-op once finished)
        result = stream.result
        history[-1] = {"role": "assistant", "content": result.answer or "(no answer)"}
        history.append(answer_note(result))
        ids += [None, result.message_id, result.message_id]
        yield "", history, result.conversation_id, ids

    @staticmethod
    def new_conversation() -> tuple:
        return [], None, [], "", ""
