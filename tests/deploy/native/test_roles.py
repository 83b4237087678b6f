"""STACK_ROLE as data: the table of roles, the order the runner starts their parts in, and the
setting that names one (what each role does for real: test_multihost.py)."""

import pytest

from deploy.native.roles import ROLES, HostRole, Part
from deploy.native.settings import StackSettings
from service.config import ConfigurationError, load


def test_the_default_role_runs_every_part_and_no_other_role_does() -> None:
    default = ROLES[StackSettings.model_fields["stack_role"].default]
    assert set(default.parts) == set(Part)
    assert default.whole
    assert [role.name for role in ROLES.values() if role.whole] == [default.name]


@pytest.mark.parametrize("role", ROLES.values(), ids=ROLES.keys())
def test_a_roles_parts_run_from_the_database_to_the_front(role: HostRole) -> None:
    """`up` starts the parts in this order: the database before the app, the app before the
    proxy in front of it; the front part is the one that proves the host serves."""
    order = list(Part)
    assert list(role.parts) == sorted(set(role.parts), key=order.index)
    assert role.front == role.parts[-1]
    assert all(role.runs(part) == (part in role.parts) for part in Part)


def test_every_part_runs_on_a_host_of_its_own_role() -> None:
    """Several hosts can always split the stack one part per host."""
    alone = {role.parts for role in ROLES.values()}
    assert {(part,) for part in Part} <= alone


def test_the_setting_takes_every_role_and_describes_each() -> None:
    description = str(StackSettings.model_fields["stack_role"].description)
    for name in ROLES:
        assert StackSettings(stack_role=name).stack_role == name
        assert f"`{name}`" in description


def test_an_unknown_role_is_refused_naming_the_roles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_ROLE", "edge")
    with pytest.raises(ConfigurationError) as refused:
        load(StackSettings)
    message = str(refused.value)
    assert "STACK_ROLE='edge'" in message
    assert "'all', 'database', 'app' or 'proxy'" in message
