"""Errors a user can act on, and the reason codes of dead-letter rows."""

from __future__ import annotations


class ConfigError(ValueError):
    """Misconfiguration found before any work starts; the message says what to fix."""


class InputError(ValueError):
    """The input corpus cannot be read as asked; the message says what to fix."""


class TableError(ValueError):
    """A published table is missing or unreadable; the message says what to fix."""


class EngineError(RuntimeError):
    """The engine cannot go on (it died, ran out of memory, or rejected the task's sampling
    parameters) or broke its contract: the run stops at once and nothing is published."""


class LockLostError(RuntimeError):
    """The run no longer holds its table's lock (its heartbeat failed, or another run took it): nothing is published."""


class GateError(RuntimeError):
    """A quality gate failed: the new version is kept for inspection, not published."""

    def __init__(self, message: str, manifests: dict[str | None, dict] | None = None):
        super().__init__(message)
        self.manifests: dict[str | None, dict] = dict(manifests or {})
        """The manifests of the run's versions (None: the single table; else by table directory),
        those kept unpublished and, with several adapter tables, those published, so the
        command line can print the run's summary either way."""


class Reason:
    """Machine-readable reason codes of dead-letter rows (the ``reason`` column)."""

    NULL_QUERY = "null_query"
    """The query cell is null."""
    NOT_A_STRING = "not_a_string"
    """The query cell holds something other than text."""
    INVALID_UTF8 = "invalid_utf8"
    """A binary query cell that is not valid UTF-8."""
    EMPTY_QUERY = "empty_query"
    """The query is empty, whitespace-only or only control/invisible characters."""
    PROMPT_TOO_LONG = "prompt_too_long"
    """Prompt tokens plus ``max_tokens`` exceed the model's context length."""
    MISSING_FIELD = "missing_template_field"
    """A column the prompt template reads is null in this row."""
    GENERATION_FAILED = "generation_failed"
    """The engine raised on this prompt, alone, after a retry."""
    UNPARSEABLE_OUTPUT = "unparseable_output"
    """The model's text could not be read as the task's output."""
