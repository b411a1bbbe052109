"""The app plugin API, where app authors import it from: ``App``, ``Context``, ``handles``.

They are defined with the engine that calls them (``daemon.core.app``,
``daemon.core.routes``): an app's handlers act through a ``Context``, which turns what
they do into the engine's effects.
"""

from daemon.core.app import App, Context
from daemon.core.routes import handles

__all__ = ["App", "Context", "handles"]
