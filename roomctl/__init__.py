"""roomctl: the command-line client, its trio client library and media peer."""

__version__ = "0.1.0"
