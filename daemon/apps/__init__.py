"""Room apps: the plugin API (``App``, ``Context``) and the built-in chat app."""

from daemon.apps.api import App, Context
from daemon.apps.chat import ChatApp

__all__ = ["App", "ChatApp", "Context"]
