"""Conditions in: prompt files (JSONL, one object with a "prompt" per line) and class ranges.

Every error names the file and line, or the option, and says how to fix it, so bad input is
refused before a model is loaded.
"""

from __future__ import annotations

import json
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence


class InputError(ValueError):
    """Bad user input. `param` names the search() argument (the CLI maps it to its option)."""

    def __init__(self, msg: str, *, param: str | None = None) -> None:
        super().__init__(msg)
        self.param = param


class InputWarning(UserWarning):
    """Input that is accepted but changes nothing (an option the run does not read); the CLI
    prints it as a warning line."""


@dataclass(frozen=True)
class PromptLine:
    index: int     # 0-based line index among the prompt lines: the GenEval folder number
    prompt: str
    raw: str       # the line as read, written back verbatim as metadata.jsonl


def read_prompts(path: str | Path) -> list[PromptLine]:
    """Read a GenEval-style JSONL file. Blank lines are skipped; every other line must be a JSON
    object with a non-empty string "prompt" (other keys, like GenEval's tag/include, are kept).
    The bare name `toy-geneval.jsonl` (or `toy-geneval`), when no such file exists here, means
    the evaluation prompts shipped with the toy-shapes model."""
    from vardist.zoo.shapes import resolve_prompt_file  # pure numpy; the zoo package is light

    path = resolve_prompt_file(path)
    if not path.is_file():
        raise InputError(f"prompt file {path} does not exist", param="prompts")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"prompt file {path} is not UTF-8 text ({e})", param="prompts") from e
    out: list[PromptLine] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line "
                             f'must be an object like {{"prompt": "a photo of a cat"}}',
                             param="prompts") from e
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object with a \"prompt\", got "
                             f"{type(obj).__name__}", param="prompts")
        prompt = obj.get("prompt")
        if prompt is None:
            raise InputError(f'{where}: the object has no "prompt" key (keys: '
                             f"{', '.join(obj) or 'none'})", param="prompts")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f'{where}: "prompt" must be a non-empty string, got {prompt!r}',
                             param="prompts")
        out.append(PromptLine(len(out), prompt, line.strip()))
    if not out:
        raise InputError(f"prompt file {path} holds no prompts (it is empty)", param="prompts")
    return out


def prompts_from_strings(prompts: Iterable[str]) -> list[PromptLine]:
    """Prompts given directly (Python API); metadata.jsonl gets {"prompt": ...}."""
    # a dict iterates over its keys (it ran the prompt "prompt"); a bare string over characters
    if isinstance(prompts, (Mapping, str, bytes)) or not isinstance(prompts, Iterable):
        raise InputError(f"prompts must be a JSONL file path or a list of prompt strings, got "
                         f"{type(prompts).__name__} {_short(prompts)}; for one prompt pass "
                         f'["a cat"]', param="prompts")
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise InputError(f"prompt {i} must be a non-empty string, got {p!r}", param="prompts")
        out.append(PromptLine(i, p, json.dumps({"prompt": p})))
    if not out:
        raise InputError("prompts is empty; give at least one prompt", param="prompts")
    return out


def parse_classes(spec: str | int | Sequence[int], num_classes: int | None) -> list[int]:
    """Class labels from "0-9", "1,3,7-9", "all", an int or a list of ints; each must lie in
    0..num_classes-1 and appear once (use more samples per class for more images)."""
    if isinstance(spec, str):
        labels = _parse_class_string(spec, num_classes)
    elif isinstance(spec, numbers.Integral) and not isinstance(spec, bool):  # numpy ints too
        labels = [int(spec)]
    elif isinstance(spec, (Mapping, bytes)) or not isinstance(spec, Iterable):
        raise InputError(f"classes must be a string like '0-9', an int or a list of ints, got "
                         f"{type(spec).__name__} {_short(spec)}", param="classes")
    else:
        labels = list(spec)
        for c in labels:
            if isinstance(c, bool) or not hasattr(c, "__index__"):
                raise InputError(f"class {c!r} is not an integer label", param="classes")
        labels = [int(c) for c in labels]
    if not labels:
        raise InputError("no classes given; e.g. classes='0-9'", param="classes")
    seen = set()
    for c in labels:
        if num_classes is not None and not 0 <= c < num_classes:
            raise InputError(f"class {c} is outside this model's range 0..{num_classes - 1}",
                             param="classes")
        if c < 0:
            raise InputError(f"class {c} is negative; labels start at 0", param="classes")
        if c in seen:
            raise InputError(f"class {c} is listed twice; ask for more samples per class "
                             f"instead", param="classes")
        seen.add(c)
    return labels


def _parse_class_string(spec: str, num_classes: int | None) -> list[int]:
    s = spec.strip()
    if s == "all":
        if num_classes is None:
            raise InputError("classes='all' needs a model with a known number of classes",
                             param="classes")
        return list(range(num_classes))
    labels: list[int] = []
    for part in s.split(","):
        m = _CLASS_PART.fullmatch(part.strip())
        if not m:
            raise InputError(f"cannot read classes {spec!r}: {part.strip()!r} is not a label or a "
                             f"range (use e.g. '0-9', '1,3,5-7' or 'all')", param="classes")
        a = int(m[1])
        b = int(m[2]) if m[2] is not None else a
        if b < a:
            raise InputError(f"class range {part.strip()!r} is empty (end before start)",
                             param="classes")
        # bounds by arithmetic, before a range is expanded (0-1000000000 was a MemoryError)
        if num_classes is not None and b >= num_classes:
            raise InputError(f"class {max(a, num_classes)} is outside this model's range "
                             f"0..{num_classes - 1} (in {part.strip()!r})", param="classes")
        if len(labels) + b - a + 1 > MAX_CLASSES:
            raise InputError(f"classes {spec!r} lists {len(labels) + b - a + 1:,} labels or more, "
                             f"above the {MAX_CLASSES:,} one run takes", param="classes")
        labels.extend(range(a, b + 1))
    return labels


# The most class labels one run takes (ImageNet has 1000); a bound for models that do not say
# how many classes they have, so a range is never expanded unchecked.
MAX_CLASSES = 1_000_000


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


_CLASS_PART = re.compile(r"(\d+)(?:\s*-\s*(\d+))?")
