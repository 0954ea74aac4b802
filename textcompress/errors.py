"""Errors a user can cause. Each says what was wrong, where, and what to do."""


class TextcompressError(Exception):
    """Base class: the CLI prints these without a traceback."""


class DataError(TextcompressError):
    """A data file is unreadable or invalid. The message names the file and line."""

    def __init__(self, path, problem: str, fix: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {problem}. Fix: {fix}")
        self.path, self.line = str(path), line


class ParamsError(TextcompressError):
    """params.yaml is invalid. The message names the file and the key."""

    def __init__(self, path, key: str, problem: str, fix: str):
        super().__init__(f"{path}: `{key}`: {problem}. Fix: {fix}")
        self.path, self.key = str(path), key
