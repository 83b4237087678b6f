"""docs/settings.md and .env.example, generated from every settings declaration of the stack.

python -m deploy.settings_docs           write both
python -m deploy.settings_docs --check   exit 1, naming the file, if either is stale
"""

import argparse
import inspect
import sys
import textwrap
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from deploy.compose.settings import ComposeSettings
from deploy.native.settings import StackSettings
from service.config import (
    ROOT,
    BudgetSettings,
    GunicornSettings,
    RunDirSettings,
    Settings,
    WorkerSettings,
)
from service.stack.migrate import MigrationSettings

# Every declaration, wherever it lives, in the order the generated files list them; each
# class's own fields only. A new settings class is one more entry.
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    WorkerSettings,
    Settings,
    MigrationSettings,
    BudgetSettings,
    GunicornSettings,
    RunDirSettings,
    StackSettings,
    ComposeSettings,
)
SETTINGS_DOC = ROOT / "docs" / "settings.md"
ENV_EXAMPLE = ROOT / ".env.example"
REGENERATE = "python -m deploy.settings_docs"
WIDTH = 96


def sources() -> list[str]:
    """The files that declare the settings, in the order their classes are listed."""
    files = (Path(str(inspect.getsourcefile(cls))).relative_to(ROOT) for cls in SETTINGS_CLASSES)
    return list(dict.fromkeys(str(path) for path in files))


def in_words(items: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def comment(text: str) -> list[str]:
    """`text` as wrapped comment lines of .env.example."""
    return textwrap.wrap(text, WIDTH, initial_indent="# ", subsequent_indent="# ")


def env_header() -> list[str]:
    """What .env.example is, where it comes from, and the one sum it must fit."""
    paragraphs = (
        "docker compose settings: copy to .env (git-ignored, never committed) and replace every "
        '"change-me" before the first `docker compose up`. Compose reads .env twice: for the '
        "${...} in docker-compose.yml, and as the environment of the db, migrate and app "
        "containers.",
        f"Generated from {in_words(sources())} by `{REGENERATE}`: edit the declarations there, "
        "not this file.",
        "WEB_CONCURRENCY x (DB_POOL_SIZE + DB_MAX_OVERFLOW) + 5 spare must fit PostgreSQL's "
        "max_connections (100, 3 of them reserved), or gunicorn refuses to start.",
    )
    return [line for paragraph in paragraphs for line in comment(paragraph)]


def own_fields(cls: type[BaseSettings]) -> dict[str, FieldInfo]:
    """The fields `cls` declares itself, not those it inherits."""
    inherited = {name for base in cls.__mro__[1:] for name in getattr(base, "model_fields", {})}
    return {name: info for name, info in cls.model_fields.items() if name not in inherited}


def render(value: Any) -> str:
    """A default as it is written in an environment variable."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path) and value.is_relative_to(ROOT):
        return str(value.relative_to(ROOT))
    return str(value)


def extra(info: FieldInfo, key: str) -> Any:
    schema_extra = info.json_schema_extra
    return schema_extra.get(key) if isinstance(schema_extra, dict) else None


def settings_doc() -> str:
    """One table per settings class: variable, default, why."""
    declared = in_words([f"`{path}`" for path in sources()])
    intro = (
        f"Generated from {declared} by `{REGENERATE}`: every knob of the stack, its default, "
        "and the reason for it. A bad value stops the process that reads it with a message "
        "naming the variable; URLs and passwords are never echoed."
    )
    lines = ["# Settings", "", *textwrap.wrap(intro, WIDTH)]
    for cls in SETTINGS_CLASSES:
        title, _, rest = (cls.__doc__ or cls.__name__).strip().partition("\n\n")
        lines += ["", f"## {' '.join(title.split()).rstrip('.')} (`{cls.__name__}`)"]
        if rest:
            lines += ["", *textwrap.wrap(" ".join(rest.split()), WIDTH)]
        lines += ["", "| variable | default | why |", "| --- | --- | --- |"]
        for name, info in own_fields(cls).items():
            default = render(info.default)
            shown = f"`{default}`" if default else "unset"
            lines.append(f"| `{name.upper()}` | {shown} | {info.description} |")
    return "\n".join(lines) + "\n"


def env_example() -> str:
    """Every per-deployment variable with its example (or default) value and its reason."""
    lines = env_header()
    for cls in SETTINGS_CLASSES:
        fields = {
            name: info
            for name, info in own_fields(cls).items()
            if extra(info, "per_deployment") is not False
        }
        if not fields:
            continue
        title = " ".join((cls.__doc__ or cls.__name__).strip().partition("\n\n")[0].split())
        lines += ["", *comment(f"--- {title}")]
        for name, info in fields.items():
            value = extra(info, "env_example") or render(info.default)
            lines += [*comment(str(info.description)), f"{name.upper()}={value}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Write the generated files, or with --check say which are stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args()
    stale = []
    for path, text in ((SETTINGS_DOC, settings_doc()), (ENV_EXAMPLE, env_example())):
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.relative_to(ROOT))
        else:
            path.write_text(text)
    if stale:
        names = ", ".join(str(path) for path in stale)
        sys.exit(f"{names} out of date with {in_words(sources())}: run `{REGENERATE}`")


if __name__ == "__main__":
    main()
