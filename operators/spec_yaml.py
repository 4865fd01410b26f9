"""Reading spec and rule YAML: ``safe_load`` semantics, line numbers for errors, one known repair.

The client's published examples put ``output_schema:`` at the indentation of the list items
above it (``conversion:`` / ``sections:`` lists), which strict YAML rejects. Those files must
load as written, so :func:`load_yaml_document` repairs exactly that shape: a mapping key that
follows a block list at the list's own indentation is read as a sibling of the list's parent
key. Every repair is reported as a notice naming the line, so ``iotlink specs check`` can tell
the author. Anything else that is not valid YAML fails with file, line and reason.

Values are built with ``yaml.SafeLoader`` only; the composed node tree is kept to map a
validation error's field path (``conversion[1].type``) back to its line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

_MAX_REPAIRS = 20
# The largest spec or rule file read: the shipped ones are a few kB; the limit keeps a stray
# 50 MB file from holding `specs check`, `rules check` or a job's start for minutes.
MAX_YAML_BYTES = 1_048_576


class YamlDocumentError(ValueError):
    """A YAML file that cannot be read; the message names file, line and reason."""


@dataclass
class YamlDocument:
    """A loaded YAML document with what is needed to explain errors in it.

    Attributes:
        data: The loaded value (plain dicts, lists and scalars).
        source: File name (or ``<text>``) used in messages.
        text: The text actually parsed (after repairs).
        notices: One line per repair made while loading.
    """

    data: object
    source: str
    text: str
    notices: list[str] = field(default_factory=list)
    _root: yaml.Node | None = None

    def line_of(self, loc: tuple) -> int | None:
        """Returns the 1-based line of the value at a field path, or of its nearest parent."""
        node = self._root
        line = node.start_mark.line + 1 if node is not None else None
        for part in loc:
            child = None
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if key_node.value == str(part):
                        child = value_node
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                child = node.value[part]
            if child is None:
                break
            node = child
            line = node.start_mark.line + 1
        return line


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _repair_sibling_key(lines: list[str], error: yaml.MarkedYAMLError) -> tuple[list[str], str] | None:
    """Dedents a key written at the indentation of the list above it; None when not that shape."""
    if error.context_mark is None or error.problem_mark is None:
        return None
    if "block collection" not in (error.context or "") or "<block end>" not in (error.problem or ""):
        return None
    list_line, key_line = error.context_mark.line, error.problem_mark.line
    column = error.problem_mark.column
    if error.context_mark.column != column or not lines[list_line].lstrip(" ").startswith("-"):
        return None
    parent = next(
        (n for n in range(list_line - 1, -1, -1) if lines[n].strip() and not lines[n].lstrip().startswith("#") and _indent(lines[n]) < column),
        None,
    )
    if parent is None:
        return None
    shift = column - _indent(lines[parent])
    repaired = list(lines)
    for n in range(key_line, len(lines)):
        text = lines[n]
        if text.strip() and not text.lstrip().startswith("#") and _indent(text) < column:
            break
        repaired[n] = text[shift:] if text[:shift].strip() == "" else text
    key = lines[key_line].strip().split(":", 1)[0]
    parent_key = lines[parent].strip().split(":", 1)[0]
    notice = f"line {key_line + 1}: '{key}' is indented like the items of the '{parent_key}' list above it; read as a sibling of '{parent_key}'"
    return repaired, notice


def _problem_line(source: str, error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}: " if mark is not None else f"{source}: "
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    return f"{where}{problem}" + (f" ({context})" if context else "")


def _alias(text: str) -> str | None:
    """The first anchor or alias (``&name`` / ``*name``), as ``line: message``, if any.

    Refused outright: a few hundred bytes of nested aliases expand to billions of values in
    whatever walks the loaded data ("billion laughs"), and no spec or rule needs them.
    """
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            return f"{event.start_mark.line + 1}: YAML {kind}{event.anchor} is not accepted in spec and rule files (write the values out)"
    return None


def _check_size(size: int, source: str) -> None:
    if size > MAX_YAML_BYTES:
        raise YamlDocumentError(f"{source}: {size} bytes, larger than the {MAX_YAML_BYTES} bytes a spec or rule file may have")


def _duplicate_key(node: yaml.Node | None) -> str | None:
    """The first mapping key given twice (YAML would silently keep the last one)."""
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in current.value:
                if isinstance(key_node, yaml.ScalarNode):
                    line = key_node.start_mark.line + 1
                    if key_node.value in seen:
                        return f"{line}: key '{key_node.value}' is given twice (first on line {seen[key_node.value]})"
                    seen[key_node.value] = line
                stack.append(value_node)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
    return None


def load_yaml_text(text: str, source: str = "<text>") -> YamlDocument:
    """Loads one YAML document from text.

    Args:
        text: The YAML text.
        source: Name used in messages (usually the file path).

    Returns:
        The document with its data, repair notices and node tree.

    Raises:
        YamlDocumentError: invalid YAML, larger than ``MAX_YAML_BYTES``, or with anchors or
            aliases, with file, line and reason.
    """
    _check_size(len(text.encode("utf-8", "surrogatepass")), source)
    lines = text.split("\n")
    notices: list[str] = []
    for _ in range(_MAX_REPAIRS):
        current = "\n".join(lines)
        try:
            alias = _alias(current)
            if alias is not None:  # refused before anything builds the document
                raise YamlDocumentError(f"{source}:{alias}")
            root = yaml.compose(current, Loader=yaml.SafeLoader)
            data = yaml.safe_load(current)
        except yaml.MarkedYAMLError as exc:
            repair = _repair_sibling_key(lines, exc)
            if repair is None:
                raise YamlDocumentError(_problem_line(source, exc)) from None
            lines, notice = repair
            notices.append(notice)
            continue
        except yaml.YAMLError as exc:
            raise YamlDocumentError(_problem_line(source, exc)) from None
        duplicate = _duplicate_key(root)
        if duplicate is not None:
            raise YamlDocumentError(f"{source}:{duplicate}")
        return YamlDocument(data=data, source=source, text=current, notices=notices, _root=root)
    raise YamlDocumentError(f"{source}: too many indentation problems to read")


def load_yaml_file(path: str | Path) -> YamlDocument:
    """Loads a YAML file (see :func:`load_yaml_text`)."""
    path = Path(path)
    try:
        _check_size(path.stat().st_size, str(path))  # before reading it
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlDocumentError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise YamlDocumentError(f"{path}: not UTF-8 text: {exc}") from None
    return load_yaml_text(text, str(path))
