"""mex: what training and live inference share (labels, feature encoding, models).

This package imports none of the apps (train, export, realtime, benchmarks).
"""
__version__ = "0.1.0"


def version_line(prog: str) -> str:
    """What `--version` prints: the program, this package's version, and the model encoding it speaks."""
    from .labels import ENCODING_VERSION

    return f"{prog} {__version__} (mex-live; feature encoding {ENCODING_VERSION})"
