"""The one error a decoder raises."""


class DecodeError(ValueError):
    """The payload cannot be read as the format it was routed to; the message says why, for the dead letters."""
