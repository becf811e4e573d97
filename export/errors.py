"""The one error type of mex-export.

It lives here, not in export/__init__.py: the editable install maps `export` as a namespace package
when the repository root is not on sys.path (pytest), and then __init__.py is never executed.
"""


class ExportError(RuntimeError):
    """An export step failed; the message says which file or flag and why."""
