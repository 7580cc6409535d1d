"""Task specs: what to ask the model, how to show it, how to read its answer.

A task is data (a YAML file in ``tasks/`` or anywhere on disk), never a code path:
adding a task needs no new Python. :func:`load_task` reads and validates one;
every problem is reported with the file, the field, the rule and the value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from bulkinfer.errors import ConfigError
from bulkinfer.tasks.parsing import answer_text, parse_answer

# Bumped whenever parsing code changes what it returns for the same raw text, so
# the fingerprint (and with it result reuse across runs) sees the change.
PARSER_VERSION = 2
"""2: list items that copy a shown example of another query are dropped (``example_leaks``)."""

MAX_SAMPLES = 64
"""Upper bound of ``sampling.n``."""

LANGUAGE_PLACEHOLDERS = frozenset({"language", "language_name"})
"""Placeholders of ``template.prefix`` and ``template.query`` (and ``{language_name}`` in an
instruction) that name the prompt's target language: its code and its English name."""

OutputKind = Literal["list", "label"]
PromptFormat = Literal["completion", "chat"]


@dataclass(frozen=True)
class Example:
    """One demonstration shown to the model before the query."""

    input: str
    """The example query, rendered where the template says ``{input}``."""
    output: str
    """The answer in exactly the format the model should copy, rendered as ``{output}``."""


@dataclass(frozen=True)
class TemplateSpec:
    """How the prompt is laid out. Placeholders use ``str.format`` syntax."""

    prefix: str = "{instruction}\n\n"
    """Rendered once at the top; may use ``{instruction}``."""
    example: str = "query: {input}\nanswer: {output}\n\n"
    """Rendered once per shown example; may use ``{input}`` and ``{output}``."""
    query: str = "query: {query}\nanswer:"
    """Rendered last; ``{query}`` is the normalised key, other names are input columns."""
    quote_query: bool = False
    """Render ``{query}`` as a JSON string literal, quotes and escapes included.
    Keys never contain line breaks (the normaliser collapses whitespace), so one
    query cannot forge the template's line structure either way; quoting also keeps
    a query from looking like the end of the instruction."""

    def fields(self) -> set[str]:
        """Names the ``query`` template reads from the row, besides ``query``."""
        return _placeholders("template.query", self.query) - {"query", ""} - LANGUAGE_PLACEHOLDERS


@dataclass(frozen=True)
class SamplingSpec:
    """Sampling parameters handed to the engine, one set per task."""

    temperature: float = 0.0
    """0 is greedy decoding: the same prompt gives the same answer every run."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    max_tokens: int = 48
    """Upper bound on generated tokens per query."""
    seed: int = 0
    """Sampling seed, so sampled runs are reproducible too."""
    frequency_penalty: float = 0.0
    """Penalises tokens by how often they already appear in the output, in [-2, 2];
    small base models otherwise repeat one item ("x, x, x, ...")."""
    stop: tuple[str, ...] = ("\n",)
    """Generation ends at the first of these strings (not included in the output)."""
    n: int = 1
    """Answers sampled per prompt, in [1, 64]; more than 1 needs ``temperature`` > 0 (greedy
    answers would all be the same). The parser unions the items of all ``n`` answers,
    deduplicated with the job's key normaliser, first occurrence first; ``parser.max_items``
    bounds the union. ``raw_output`` holds the answers one per line."""
    ignore_eos: bool = False
    """Keep generating past the end-of-sequence token (stop strings still apply), so
    every answer has ``max_tokens`` tokens when ``stop`` is empty. For benchmarks
    (``bulkinfer bench`` needs equal output lengths across engines); a real task
    leaves it off, or its answers run on into noise."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 5.0:
            raise ConfigError(f"sampling.temperature must be in [0, 5], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise ConfigError(f"sampling.frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        if not 1 <= self.max_tokens <= 4096:
            raise ConfigError(f"sampling.max_tokens must be in [1, 4096], got {self.max_tokens}")
        if not 1 <= self.n <= MAX_SAMPLES:
            raise ConfigError(f"sampling.n must be in [1, {MAX_SAMPLES}], got {self.n}")
        if self.n > 1 and self.temperature == 0.0:
            raise ConfigError(
                f"sampling.n = {self.n} needs sampling.temperature > 0 (in (0, 5]), got 0.0: greedy decoding gives the same answer n times"
            )


@dataclass(frozen=True)
class ParserSpec:
    """How raw model text becomes the task's typed output."""

    separators: tuple[str, ...] = (",", ";")
    """For ``list`` tasks: item separators."""
    max_items: int = 32
    """For ``list`` tasks: items kept after deduplication, in the model's order."""
    answer_marker: str | None = None
    """Chain of thought: the answer is the text after the last occurrence of this
    marker (e.g. ``"Answer:"``); text without the marker cannot be parsed."""
    json_field: str | None = None
    """For JSON output (``structured.json_schema``): the member holding the answer, e.g.
    ``synonyms`` in ``{"synonyms": [...]}``; None reads the whole value (a JSON array
    for ``list`` tasks, a JSON string for ``label`` tasks)."""

    def __post_init__(self) -> None:
        if self.max_items < 1:
            raise ConfigError(f"parser.max_items must be >= 1, got {self.max_items}")
        if not self.separators or any(not s for s in self.separators):
            raise ConfigError(f"parser.separators must be non-empty strings, got {list(self.separators)}")


@dataclass(frozen=True)
class StructuredSpec:
    """Constrained decoding: the engine can only produce text of this shape.

    At most one of the three is set. With a constraint the parser cannot fail on the
    format, only on an answer cut short by ``sampling.max_tokens``.
    """

    json_schema: str | None = None
    """A JSON schema (written as a YAML mapping; kept as canonical JSON text) the output
    must match, e.g. ``{type: object, properties: {synonyms: {type: array, items: {type: string}}}}``.
    The parser reads ``parser.json_field`` of the value."""
    choice: bool = False
    """``label`` tasks: the output is exactly one of ``labels``."""
    regex: str | None = None
    """A regular expression the whole output must match, e.g. for reasoning followed by
    ``Answer: <label>`` in a chain-of-thought task."""

    def __post_init__(self) -> None:
        chosen = [name for name in ("json_schema", "regex") if getattr(self, name) is not None] + (["choice"] if self.choice else [])
        if len(chosen) > 1:
            raise ConfigError(f"structured takes one of json_schema, choice, regex; got {', '.join(chosen)}")
        if self.json_schema is not None:
            try:
                schema = json.loads(self.json_schema)
            except json.JSONDecodeError as e:
                raise ConfigError(f"structured.json_schema is not valid JSON: {e}") from e
            if not isinstance(schema, dict):
                raise ConfigError(f"structured.json_schema must be a mapping (a JSON schema object), got {schema!r}")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ConfigError(f"structured.regex is not a valid regular expression ({e}): {self.regex!r}") from e

    @property
    def enabled(self) -> bool:
        """Whether any constraint is set."""
        return self.json_schema is not None or self.choice or self.regex is not None


@dataclass(frozen=True)
class GateSpec:
    """Quality gates: a new version that misses one is kept for inspection but not published."""

    min_valid_rate: float = 0.0
    """Least share of generated keys whose output parsed (the rest: ``unparseable_output``)."""
    max_empty_rate: float = 1.0
    """Largest share of table rows with an empty output (an empty list)."""
    max_echo_rate: float = 1.0
    """Largest share of rows whose output copies a few-shot example or echoes the query."""
    max_churn_rate: float = 1.0
    """Largest share of keys, among those in the previous version too, whose output changed."""
    max_failed_rate: float = 0.05
    """Largest share of keys dead-lettered ``generation_failed``, ``unparseable_output`` or
    ``prompt_too_long`` (on by default: a failing engine must not publish a near-empty table)."""
    max_length_rate: float = 1.0
    """Largest share of rows whose answer was cut off at ``sampling.max_tokens`` (finish reason ``length``)."""

    def __post_init__(self) -> None:
        for name in ("min_valid_rate", "max_empty_rate", "max_echo_rate", "max_churn_rate", "max_failed_rate", "max_length_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"gates.{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class TaskSpec:
    """A complete task: instruction, examples, layout, sampling and parsing."""

    name: str
    """Short name; also the ``task`` column of every output row."""
    output: OutputKind
    """``list`` (e.g. synonyms: a list of strings) or ``label`` (one of ``labels``)."""
    instruction: str = ""
    """Told to the model at the top of the prompt; base models mostly follow the examples."""
    examples: tuple[Example, ...] = ()
    """Demonstrations, in the order shown."""
    shots: int = -1
    """How many examples to show: 0 zero-shot, 1 one-shot, k few-shot, -1 all of them."""
    examples_by_language: tuple[tuple[str, tuple[Example, ...]], ...] = ()
    """Demonstrations per row language, as (ISO 639 code, examples) sorted by code; a row
    whose language has none here gets ``examples``. ``shots`` applies to each list."""
    instruction_by_language: tuple[tuple[str, str], ...] = ()
    """The instruction per row language, as (code, text) sorted by code; others get ``instruction``."""
    target_languages: tuple[str, ...] = ()
    """Fan-out: one prompt per key and target language (ISO 639 codes as ``bulkinfer.tasks.languages``
    writes them: ``en``, ``de``, ``yue``), each row's language being the target, so the key
    gets answers in every one of them. A target with its own ``instruction_by_language`` /
    ``examples_by_language`` gets those; the others the fallback ``instruction`` and
    ``examples``, which must name the target language through ``{language_name}`` (its
    English name) or ``{language}`` (its code). Empty: one prompt per key, in the key's own language."""
    labels: tuple[str, ...] = ()
    """For ``label`` tasks: the allowed answers."""
    output_column: str = ""
    """Name of the typed output column; defaults to the task name for lists, ``label`` for labels."""
    description: str = ""
    """One line for humans."""
    format: PromptFormat = "completion"
    """``completion``: one text prompt for base models, laid out by ``template``. ``chat``:
    for chat / instruct models; ``instruction`` becomes the system turn, each shown example a
    user turn (``template.query`` with the example's input) and an assistant turn (its
    output), the query the last user turn; the model tokenizer's chat template renders them."""
    adapter: str | None = None
    """A LoRA adapter directory (PEFT format) applied to the model; a relative path is
    relative to the spec file. ``--adapter`` on the command line overrides it."""
    template: TemplateSpec = field(default_factory=TemplateSpec)
    """Prompt layout."""
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    """Sampling parameters."""
    parser: ParserSpec = field(default_factory=ParserSpec)
    """Output parsing."""
    structured: StructuredSpec = field(default_factory=StructuredSpec)
    """Constrained decoding (JSON schema, label choice or regex)."""
    gates: GateSpec = field(default_factory=GateSpec)
    """Quality gates checked before a new version is published."""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"name must be letters, digits, '-' or '_', got {self.name!r}")
        if self.output not in ("list", "label"):
            raise ConfigError(f"output must be 'list' or 'label', got {self.output!r}")
        if self.output == "label" and len(self.labels) < 2:
            raise ConfigError(f"labels must list at least 2 labels for an output: label task, got {list(self.labels)}")
        if self.output == "list" and self.labels:
            raise ConfigError("labels is only for output: label tasks; remove it or set output: label")
        if not -1 <= self.shots <= len(self.examples):
            raise ConfigError(f"shots must be in [-1, {len(self.examples)}] (the number of examples), got {self.shots}")
        for language, examples in self.examples_by_language:
            if not -1 <= self.shots <= len(examples):
                raise ConfigError(
                    f"shots must be in [-1, {len(examples)}] (the number of examples_by_language.{language}), got {self.shots}"
                )
        for name, text, allowed_fields in (
            ("template.prefix", self.template.prefix, {"instruction"} | LANGUAGE_PLACEHOLDERS),
            ("template.example", self.template.example, {"input", "output"}),
        ):
            used = _placeholders(name, text)
            if used - allowed_fields:
                raise ConfigError(f"{name} may only use {sorted(allowed_fields)}, got {sorted(used - allowed_fields)}")
        if "query" not in _placeholders("template.query", self.template.query):
            raise ConfigError(f"template.query must contain {{query}}, got {self.template.query!r}")
        if self.format not in ("completion", "chat"):
            raise ConfigError(f"format must be 'completion' or 'chat', got {self.format!r}")
        if self.structured.choice and self.output != "label":
            raise ConfigError("structured.choice constrains the output to one of labels: it needs output: label")
        if self.parser.json_field is not None and self.structured.json_schema is None:
            raise ConfigError("parser.json_field reads JSON output: set structured.json_schema too")
        if self.structured.choice and self.parser.answer_marker:
            raise ConfigError("structured.choice makes the output exactly a label, with no room for an answer marker; use structured.regex")
        self._check_fan_out()
        if not self.output_column:
            object.__setattr__(self, "output_column", self.name if self.output == "list" else "label")
        # Examples show the model the answer format, so each must read back through
        # the task's own parser (a label from labels; JSON). The answer marker may be
        # in the example's output (chain of thought) or in the template before it.
        for ex in self.examples + tuple(ex for _, examples in self.examples_by_language for ex in examples):
            parsed = parse_answer(self, answer_text(self, ex.output) or ex.output, "")
            if parsed.error is not None:
                raise ConfigError(
                    f"examples: output {ex.output!r} of example {ex.input!r} does not parse with the task's parser: {parsed.error}"
                )

    def _check_fan_out(self) -> None:
        if self.sampling.n > 1 and (self.output != "list" or self.structured.json_schema is not None or self.parser.answer_marker):
            raise ConfigError(
                f"sampling.n = {self.sampling.n} unions the items of several answers: it needs output: list without "
                "structured.json_schema or parser.answer_marker; set sampling.n to 1"
            )
        if not self.target_languages:
            return
        if len(set(self.target_languages)) != len(self.target_languages):
            repeated = sorted({code for code in self.target_languages if self.target_languages.count(code) > 1})
            raise ConfigError(f"target_languages lists {', '.join(repeated)} more than once; list each language once")
        own = {code for code, _ in self.instruction_by_language}
        fallback = [code for code in self.target_languages if code not in own]
        template = _placeholders("template.prefix", self.template.prefix) | _placeholders("template.query", self.template.query)
        names_language = "{language_name}" in self.instruction or bool(LANGUAGE_PLACEHOLDERS & template)
        if fallback and not names_language:
            shown = ", ".join(fallback[:8]) + (f" and {len(fallback) - 8} more" if len(fallback) > 8 else "")
            raise ConfigError(
                f"target_languages: {shown} have no instruction_by_language, and the fallback prompt does not name the target "
                "language; put {language_name} in instruction (or {language_name} / {language} in template.prefix or "
                "template.query) so that their answers come in the target language"
            )

    @property
    def shown_examples(self) -> tuple[Example, ...]:
        """The fallback examples the prompt shows, honouring ``shots``."""
        return self.examples if self.shots < 0 else self.examples[: self.shots]

    @property
    def languages(self) -> tuple[str, ...]:
        """Languages with their own examples or instruction."""
        return tuple(sorted({code for code, _ in self.examples_by_language} | {code for code, _ in self.instruction_by_language}))

    def examples_for(self, language: str | None) -> tuple[Example, ...]:
        """The examples a row in ``language`` is shown (its own, else the fallback), honouring ``shots``."""
        examples = dict(self.examples_by_language).get(language, self.examples) if language else self.examples
        return examples if self.shots < 0 else examples[: self.shots]

    def instruction_for(self, language: str | None) -> str:
        """The instruction for a row in ``language`` (its own, else ``instruction``)."""
        return dict(self.instruction_by_language).get(language, self.instruction) if language else self.instruction

    @property
    def every_shown_example(self) -> tuple[Example, ...]:
        """Every example some prompt shows, fallback and per-language."""
        return self.shown_examples + tuple(ex for code, _ in self.examples_by_language for ex in self.examples_for(code))

    def fingerprint(self) -> str:
        """A digest of everything in the spec that can change an answer or its parse.

        Gates, the description and the list of ``target_languages`` are left out: they
        change no answer, so editing them does not make a rerun regenerate anything (a
        row's target language is its ``language``, on which reuse matches as well;
        ``sampling.n`` is in, when above 1). So is the adapter's path: the job folds the
        adapter's content digest in instead (see ``pipelines.cache_job``), so moving an
        adapter directory does not count as a change, and retraining one does.
        """
        spec = dataclasses.asdict(self)
        del spec["gates"], spec["description"], spec["adapter"]
        # Left out when unused, so tasks without them keep the fingerprint they had.
        # The list of target languages is left out too: it changes no answer. Each row's prompt
        # is fixed by the rest of the spec, the key and the row's language, which reuse matches
        # on; so adding a target language generates only the new (key, language) pairs.
        del spec["target_languages"]
        for name in ("examples_by_language", "instruction_by_language"):
            if not spec[name]:
                del spec[name]
        if not spec["sampling"]["ignore_eos"]:
            del spec["sampling"]["ignore_eos"]
        if spec["sampling"]["n"] == 1:
            del spec["sampling"]["n"]
        payload = json.dumps({"spec": spec, "parser_version": PARSER_VERSION}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _placeholders(name: str, text: str) -> set[str]:
    try:
        return {field_name for _, field_name, _, _ in string.Formatter().parse(text) if field_name is not None}
    except ValueError as e:
        raise ConfigError(f"{name} is not a valid template ({e}); write literal braces as {{{{ and }}}}: {text!r}") from e


_BUILTIN = "bulkinfer.tasks.builtin"


def builtin_task_names() -> list[str]:
    """Names of the task specs shipped in ``bulkinfer/tasks/builtin/``."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(_BUILTIN).iterdir() if p.name.endswith(".yaml"))


def load_task(name_or_path: str) -> TaskSpec:
    """Loads and validates a task spec.

    Args:
        name_or_path: a built-in task name (``synonyms``, ``classify``) or the path
            of a YAML file.

    Returns:
        The validated spec.

    Raises:
        ConfigError: the task does not exist or its spec is invalid; the message
            names the file, the field and what is wrong.
    """
    import yaml

    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"task spec file {name_or_path} does not exist")
        text, where, base = path.read_text(encoding="utf-8"), str(path), path.parent
    else:
        resource = resources.files(_BUILTIN) / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(
                f"unknown task {name_or_path!r}; built-in tasks: {', '.join(builtin_task_names())} (or give a path to a .yaml spec)"
            )
        text, where = resource.read_text(encoding="utf-8"), f"bulkinfer/tasks/builtin/{name_or_path}.yaml"
        base = Path(str(resources.files(_BUILTIN)))
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a task spec must be a mapping of fields, got {type(raw).__name__}")
    try:
        task = _build(TaskSpec, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    if task.adapter and not Path(task.adapter).expanduser().is_absolute() and "://" not in task.adapter:
        task = dataclasses.replace(task, adapter=str((base / task.adapter).resolve()))
    return task


def task_from_dict(spec: Mapping[str, Any], where: str = "task spec") -> TaskSpec:
    """Rebuilds a task spec from its ``dataclasses.asdict`` form, validated like :func:`load_task`.

    The job stores the spec of every version in its manifest (``task_spec``), so
    readers such as ``bulkinfer export-training`` render prompts with the spec that
    produced the table, not with whatever the YAML file says today.

    Args:
        spec: a mapping of task fields, e.g. ``manifest["task_spec"]`` (JSON lists
            stand for tuples).
        where: what to name in error messages.

    Returns:
        The validated spec.

    Raises:
        ConfigError: the mapping is not a valid task spec; the message names the field.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: a task spec must be a mapping of fields, got {type(spec).__name__}")
    raw = json.loads(json.dumps(spec))  # a deep copy, so the caller's mapping is left alone
    structured = raw.get("structured")
    if isinstance(structured, dict) and structured.get("json_schema", "") is None:
        del structured["json_schema"]  # the default; _build takes only a mapping here
    if isinstance(structured, dict) and isinstance(structured.get("json_schema"), str):
        # The spec keeps the schema as canonical JSON text; _build takes it as a mapping, like YAML gives it.
        try:
            structured["json_schema"] = json.loads(structured["json_schema"])
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: structured.json_schema is not valid JSON: {e}") from e
    for name in ("examples_by_language", "instruction_by_language"):
        # Kept as (code, value) pairs in the spec; written as a mapping, like YAML gives it.
        if isinstance(raw.get(name), list):
            raw[name] = {code: value for code, value in raw[name]}
    try:
        return _build(TaskSpec, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


_NESTED = {"template": TemplateSpec, "sampling": SamplingSpec, "parser": ParserSpec, "structured": StructuredSpec, "gates": GateSpec}


def _build(cls: Any, raw: dict[str, Any], prefix: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown field {prefix}{unknown[0]!r}; known fields: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        value = raw[f.name]
        where = f"{prefix}{f.name}"
        if f.name in _NESTED and cls is TaskSpec:
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a mapping, got {value!r}")
            value = _build(_NESTED[f.name], value, f"{where}.")
        elif f.name == "examples":
            value = tuple(_example(f"examples[{i}]", item) for i, item in enumerate(value or []))
        elif f.name == "examples_by_language":
            value = tuple(
                (code, tuple(_example(f"{where}.{code}[{i}]", item) for i, item in enumerate(items)))
                for code, items in _by_language(where, value, list)
            )
        elif f.name == "instruction_by_language":
            value = _by_language(where, value, str)
        elif f.name == "target_languages":
            value = _target_languages(value)
        elif f.name in ("labels", "stop", "separators"):
            if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where} must be a list of strings, got {value!r}")
            value = tuple(value)
        elif f.name == "json_schema" and cls is StructuredSpec:
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a mapping (a JSON schema object), got {value!r}")
            value = json.dumps(value, sort_keys=True, ensure_ascii=False)
        else:
            value = _scalar(where, f.type, value)
        values[f.name] = value
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required field {prefix}{missing[0]!r}")
    return cls(**values)


def _example(where: str, item: Any) -> Example:
    if not isinstance(item, dict) or set(item) != {"input", "output"}:
        raise ConfigError(f"{where} must be a mapping with exactly 'input' and 'output', got {item!r}")
    if not all(isinstance(v, str) and v.strip() for v in item.values()):
        raise ConfigError(f"{where}: input and output must be non-empty strings, got {item!r}")
    return Example(input=item["input"], output=item["output"])


def _by_language(where: str, value: Any, kind: type) -> tuple[tuple[str, Any], ...]:
    """A mapping of language code to a non-empty list (examples) or string (instruction), sorted by code."""
    from bulkinfer.tasks.languages import check_language_code

    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of language code to {kind.__name__}, e.g. {{de: ...}}, got {value!r}")
    pairs = []
    for code, item in value.items():
        check_language_code(where, code)
        if not isinstance(item, kind) or not (item.strip() if isinstance(item, str) else item):
            what = "a non-empty list of examples" if kind is list else "a non-empty string"
            raise ConfigError(f"{where}.{code} must be {what}, got {item!r}")
        pairs.append((code, item))
    return tuple(sorted(pairs))


def _target_languages(value: Any) -> tuple[str, ...]:
    """A list of canonical language codes (``check_language_code`` names the field, value and allowed form)."""
    from bulkinfer.tasks.languages import check_language_code

    if isinstance(value, str) or not isinstance(value, list):
        raise ConfigError(f"target_languages must be a list of ISO 639 language codes, e.g. [en, de, ja], got {value!r}")
    return tuple(check_language_code(f"target_languages[{i}]", code) for i, code in enumerate(value))


def _scalar(where: str, type_name: Any, value: Any) -> Any:
    expected = str(type_name)
    if expected == "bool":
        ok = isinstance(value, bool)
    elif expected == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif "None" in expected:
        ok = value is None or isinstance(value, str)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{where} must be of type {expected}, got {value!r}")
    return value
