"""The tutorial's sample transformation service, as a wsgate transform callable."""

from gateway import TransformContext


def client_transformation(message: TransformContext) -> str | bytes:
    """Append the tutorial's marker to every text message a client sends."""
    if message.is_text:
        return f"{message.payload} Client Transformation complete"
    return message.payload
