"""Types of the compiled frame decoder; the same API as ``_frames_py``."""

from typing import Final

NEED_MORE: Final[int]
PAHO: Final[int]

def decode(data: bytes, pos: int, mqtt5: bool, max_frame: int) -> tuple[list[object], int, int]: ...
