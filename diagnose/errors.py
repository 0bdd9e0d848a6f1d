"""User-facing errors: the CLI prints these as one line on stderr (no traceback) and exits non-zero."""


class DiagnoseError(Exception):
    """Bad input or environment the user can fix (unknown name, malformed file, missing model, ...)."""
