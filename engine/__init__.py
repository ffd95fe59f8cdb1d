"""The pod's inference process: an OpenAI-compatible aiohttp server around vLLM's AsyncLLM.

It never imports the sidecar; the two talk over HTTP only.
"""
