"""Adapters leaving Switchboard: merged checkpoints, GGUF files, Ollama Modelfiles, PEFT folders for vLLM.

It lives under ``training`` because it loads the full-precision base and
writes model weights, which ``adapters`` (headers only) must not, and it is
no part of serving. (``training/export.py`` is something else: logged turns
as chat data.)
"""
