"""The app plugin API, where app authors import it from: ``App`` and ``Context``.

They are defined with the engine that calls them (``daemon.core.app``): an app's handlers
act through a ``Context``, which turns what they do into the engine's effects.
"""

from daemon.core.app import App, Context

__all__ = ["App", "Context"]
