"""Every settings declaration, wherever it lives (service/, deploy/native/, deploy/compose/), is
one that docs/settings.md and .env.example are generated from (their content:
test_containers.py)."""

from deploy import settings_docs
from service.config import FromEnvironment


def declarations(cls: type[FromEnvironment]) -> set[type[FromEnvironment]]:
    """`cls`'s subclasses, at every depth, declared in the repo's own packages."""
    found = set()
    for sub in cls.__subclasses__():
        if sub.__module__.partition(".")[0] in {"service", "deploy"}:
            found.add(sub)
        found |= declarations(sub)
    return found


def test_every_declaration_is_listed_once() -> None:
    listed = settings_docs.SETTINGS_CLASSES
    assert len(set(listed)) == len(listed)
    assert declarations(FromEnvironment) == set(listed)


def test_the_generated_files_name_every_file_that_declares_settings() -> None:
    sources = settings_docs.sources()
    assert sources == [
        "service/config.py",
        "service/stack/migrate.py",
        "deploy/native/settings.py",
        "deploy/compose/settings.py",
    ]
    for path in sources:
        assert f"`{path}`" in settings_docs.settings_doc()
        assert path in settings_docs.env_example()
