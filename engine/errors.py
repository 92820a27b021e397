"""Errors a user's code or data can cause, below everything that raises them."""


class UserCodeError(Exception):
    """The user's data or model broke in a way a stage can name; exit 1, reason in the stage."""
