"""Contract files: what loads, what is refused (with file:line), and `contracts list|show`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli import cli
from bridge.contracts.registry import check_contract_folder, load_contracts
from bridge.errors import ContractError

REPO_CONTRACTS = Path(__file__).resolve().parents[2] / "mappings" / "contracts"

GOOD = """\
type: shop.order.OrderPaid
aggregate: order
description: The order was paid.
majors:
  1:
    fields:
      orderId: {type: integer, description: The order.}
      method: {type: enum, values: [card, cash], description: How.}
      note: {type: string, optional: true, since: 1, description: Added later.}
"""


def write(folder: Path, text: str, name: str = "OrderPaid") -> Path:
    path = folder / "order" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems_of(folder: Path) -> list[str]:
    return check_contract_folder(folder)[1]


def test_a_good_file_loads_with_its_revisions(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    major = load_contracts(tmp_path).major("shop.order.OrderPaid.v1")
    assert major is not None and major.revision == 1
    assert list(major.fields_at(0)) == ["orderId", "method"]
    assert major.dataschema() == "urn:cdc-bridge:contract:shop.order.OrderPaid:1.1"
    assert major.dataschema(0) == "urn:cdc-bridge:contract:shop.order.OrderPaid:1.0"


@pytest.mark.parametrize(("change", "line", "fragment"), [
    (("method: {type: enum, values: [card, cash], description: How.}", "method: {type: enum, values: [card, cash]}"),
     8, "missing required field 'description'"),
    (("values: [card, cash], ", ""), 8, "a field of type enum needs 'values'"),
    (("aggregate: order", "aggregate: customer"), 1, "names aggregate 'order' but 'aggregate' is 'customer'"),
    (("type: integer", "type: int"), 7, "Input should be 'string', 'integer'"),
    (("since: 1", "since: 2"), 6, "revisions must be contiguous: no field has since: 1"),
    (("  1:\n", "  2:\n"), 5, None),  # major 2 alone: allowed (no v1 to upcast from)
])
def test_a_wrong_file_is_refused_with_its_line(tmp_path: Path, change: tuple[str, str], line: int,
                                                 fragment: str | None) -> None:
    path = write(tmp_path, GOOD.replace(*change, 1))
    found = problems_of(tmp_path)
    if fragment is None:
        assert found == []
        return
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}:{line}:") and fragment in found[0], found[0]


def test_a_second_major_needs_an_upcaster_and_the_file_its_event_name(tmp_path: Path) -> None:
    text = GOOD + "  2:\n    fields:\n      orderId: {type: integer, description: The order.}\n"
    write(tmp_path, text, name="Paid")
    found = problems_of(tmp_path)
    assert any("must be named OrderPaid.yaml (it is Paid.yaml)" in p for p in found), found
    assert any("major 2 needs 'upcast'" in p and ":10:" in p for p in found), found


def test_a_type_declared_twice_is_refused(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "OrderPaid.yaml").write_text(GOOD)
    found = problems_of(tmp_path)
    assert len(found) == 1 and "is also declared in" in found[0]
    with pytest.raises(ContractError, match="is also declared in"):
        load_contracts(tmp_path)


def test_list_shows_every_restaurant_event_and_show_its_fields_and_producers() -> None:
    listed = CliRunner().invoke(cli, ["contracts", "list", "--dir", str(REPO_CONTRACTS)])
    assert listed.exit_code == 0, listed.output
    types = [line.split()[0] for line in listed.output.splitlines()]
    assert "restaurant.order.OrderPlaced.v1" in types and "restaurant.customer.CustomerSignedUp.v1" in types
    assert len([t for t in types if t.endswith(".v1")]) == 19
    mappings = str(REPO_CONTRACTS.parent)
    shown = CliRunner().invoke(cli, ["contracts", "show", "OrderPlaced", "--dir", str(REPO_CONTRACTS),
                                     "--mappings", mappings])
    assert shown.exit_code == 0, shown.output
    assert "produced by: rule orders.opened (public.orders), rule orders.placed (public.orders)" in shown.output
    assert "total: decimal  [optional]" in shown.output and "price: decimal" in shown.output


def test_show_and_list_say_what_is_wrong(tmp_path: Path) -> None:
    unknown = CliRunner().invoke(cli, ["contracts", "show", "NoSuchEvent", "--dir", str(REPO_CONTRACTS)])
    assert unknown.exit_code == 2 and "no contract 'NoSuchEvent'" in unknown.output
    missing = CliRunner().invoke(cli, ["contracts", "list", "--dir", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no contracts folder" in missing.output
    path = write(tmp_path, GOOD.replace("description: The order.}", "}", 1))
    broken = CliRunner().invoke(cli, ["contracts", "list", "--dir", str(tmp_path)])
    assert broken.exit_code == 2 and f"{path}:7:" in broken.output
