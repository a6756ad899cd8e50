"""Response-text helpers shared by the methods and the analyses."""

from __future__ import annotations


def text_after_think(text: str) -> str:
    """EVOL-RL embeds the answer part: the text after ``</think>`` when present."""
    return text.rsplit("</think>", 1)[1] if "</think>" in text else text
