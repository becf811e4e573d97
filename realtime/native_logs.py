"""Keep mediapipe's and TensorFlow Lite's start-up chatter off the user's terminal.

Their C++ code writes to file descriptor 2 directly ("W0000 00:00:... inference_feedback_manager.cc:114]
...", "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."), several lines a run, also into the
terminal overlay; no environment variable of mediapipe 0.10.21 silences them before absl is set up.
`quiet()` points descriptor 2 at a pipe and forwards every line that is not such a log line, so our
own messages and anything unexpected still reach stderr.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

# absl's prefix (severity I/W, date, time, thread, file:line]) for info and warning lines, and the two
# plain lines TensorFlow Lite and absl print once
NOISE = re.compile(rb"^(?:[IW]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] |INFO: Created TensorFlow Lite |"
                   rb"WARNING: All log messages before absl::InitializeLog\(\) is called)")


@contextlib.contextmanager
def quiet(enabled: bool = True):
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (an embedding host): nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not NOISE.match(line):
                    os.write(saved, line)

    thread = threading.Thread(target=forward, name="mex-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the forwarder drains it and ends
        thread.join(timeout=2.0)
        os.close(saved)
