"""`python -m tests.support.crashing_worker`: the real `audioguard worker`, except that decoding
audio whose bytes begin with `CRASH_MAGIC` kills the process with a real segfault (a read of
address 0 through ctypes), the way a bug in a native decoder would.

Test-only. The production decoder has no such path and no switch that turns one on: this launcher
replaces the pipeline's decode function in its own process, before the CLI starts, and nothing a
message contains can reach it in `audioguard worker`.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

#: the first bytes of an "audio file" that crashes this worker when it is decoded
CRASH_MAGIC = b"AUDIOGUARD-TEST-SEGFAULT\n"


def install() -> None:
    import consumers.runner
    from services.audio import decode_with_limits as real

    def decode_or_crash(source: Any, limits: Any, **options: Any) -> Any:
        if isinstance(source, bytes) and source.startswith(CRASH_MAGIC):
            ctypes.string_at(0)  # SIGSEGV, in a fetch thread: the whole process dies
        return real(source, limits, **options)

    # the name the pipeline's fetch threads call (consumers.runner imported it from services.audio)
    consumers.runner.decode_with_limits = decode_or_crash  # type: ignore[attr-defined]


def main() -> int:
    install()
    from services.cli import main as cli

    return cli(["worker", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
