"""The settings table of docs/SERVING.md, generated from `service.config.Settings`.

    python -m service.settings_doc           # rewrite the table in docs/SERVING.md
    python -m service.settings_doc --check   # exit 1 if the table there is stale

One row per `Settings` field: its variable `CTM_X`, the flag `python -m service` maps to it (from
`service.__main__.build_parser`), its type and bounds, its default, and its description: the field's
own, else its flag's help. A field with no
description anywhere is an error, so a new setting cannot reach the docs undescribed.
"""

import argparse
import re
import sys
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from service.config import FACTORY_DEFAULTS, Settings

START = "<!-- settings:start -->"
END = "<!-- settings:end -->"
SERVING_MD = Path(__file__).resolve().parents[1] / "docs" / "SERVING.md"


def flags() -> dict[str, str]:
    """Field name -> the `python -m service` flag that sets it."""
    from service.__main__ import build_parser

    return {
        action.dest: action.option_strings[-1]
        for action in build_parser()._actions
        if action.option_strings and action.dest in Settings.model_fields
    }


def flag_help() -> dict[str, str]:
    """Field name -> its flag's help text, without the "[CTM_X; default: ...]" the parser appends."""
    from service.__main__ import build_parser

    return {
        action.dest: (action.help or "").split(" [CTM_")[0]
        for action in build_parser()._actions
        if action.option_strings and action.dest in Settings.model_fields
    }


def _type(field: FieldInfo) -> str:
    annotation = field.annotation
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    optional = len(args) < len(typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Literal:
        text = "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    elif typing.get_origin(annotation) is list:
        text = "comma-separated list"
    else:
        base = args[0] if optional and len(args) == 1 else annotation
        names = {int: "integer", float: "number", str: "text", Path: "path", SecretStr: "secret"}
        text = names.get(base, getattr(base, "__name__", str(base)))
    low = next((item.ge for item in field.metadata if isinstance(item, annotated_types.Ge)), None)
    high = next((item.le for item in field.metadata if isinstance(item, annotated_types.Le)), None)
    if low is not None and high is not None:
        text += f", {low}–{high}"
    elif low is not None:
        text += f", ≥ {low}"
    elif high is not None:
        text += f", ≤ {high}"
    if any(isinstance(item, annotated_types.MinLen) for item in field.metadata):
        text += ", not empty"
    return text


def _value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "empty"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def _default(name: str, field: FieldInfo) -> str:
    if name in FACTORY_DEFAULTS:
        return FACTORY_DEFAULTS[name]
    if field.default_factory is not None:
        return _value(field.default_factory())
    if field.default is PydanticUndefined:
        return "required"
    return _value(field.default)


def _description(name: str, field: FieldInfo, helps: dict[str, str]) -> str:
    text = field.description
    if not text and helps.get(name):
        text = helps[name][0].upper() + helps[name][1:]
    if not text:
        raise ValueError(f"Settings.{name} has no description: give its Field one (service/config.py)")
    return text if text.endswith(".") else text + "."


def _cell(text: str) -> str:
    """`text` as one Markdown table cell: quoted literals ('X-API-Key: <key>') as code, and outside code
    nothing that Markdown would read as a tag, emphasis or a column break."""
    text = re.sub(r"(?<!\w)'([^']+)'(?!\w)", r"`\1`", text.replace("\n", " "))
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # the even parts are outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "`".join(parts).replace("|", "\\|")


def settings_table() -> str:
    """Every `Settings` field as one row of a Markdown table."""
    names, helps = flags(), flag_help()
    rows = [
        "| variable | flag | type | default | description |",
        "|---|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        cells = [
            f"`CTM_{name.upper()}`",
            f"`{names[name]}`" if name in names else "—",
            _type(field),
            _default(name, field),
            _description(name, field, helps),
        ]
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def render(document: str) -> str:
    """`document` with the block between the markers replaced by the current table."""
    head, start, rest = document.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"the markers {START} and {END} are missing")
    return f"{head}{START}\n{settings_table()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.settings_doc",
        description="Regenerate the settings table in docs/SERVING.md from service.config.Settings.",
    )
    parser.add_argument("--check", action="store_true", help="only check: exit 1 if the table is stale")
    parser.add_argument(
        "--path", type=Path, default=SERVING_MD, help="the Markdown file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    current = args.path.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(
                f"{args.path}: the settings table is stale; run python -m service.settings_doc",
                file=sys.stderr,
            )
            return 1
        print(f"{args.path}: the settings table is up to date")
        return 0
    if wanted != current:
        args.path.write_text(wanted, encoding="utf-8")
        print(f"{args.path}: settings table rewritten")
    else:
        print(f"{args.path}: settings table already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
