"""The terminal side of cockpit: the CLI and the Textual app. Never imports torch."""

__version__ = "0.1.0"
