"""`contracts publish` and `contracts check` on a published base contract replaced by variants of it.

tests/fixtures/contracts/base is one contract (shop.order.OrderPlaced: an enum, a nullable, an optional,
a list of objects); each file of tests/fixtures/contracts/variants replaces it after the base was published.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli import cli
from bridge.contracts.check import check_contracts
from bridge.contracts.registry import load_contracts
from bridge.contracts.snapshots import LOCK_FILE, publish
from bridge.errors import ContractError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "contracts"
REPO_CONTRACTS = Path(__file__).resolve().parents[2] / "mappings" / "contracts"
SNAPSHOT = Path("schemas/shop.order.OrderPlaced/1.0.schema.json")


@pytest.fixture
def published(tmp_path: Path) -> Path:
    """The base contract folder, published (snapshot 1.0 and its lock entry)."""
    folder = tmp_path / "contracts"
    shutil.copytree(FIXTURES / "base", folder)
    assert publish(load_contracts(folder)) == [
        f"published revision 1.0 of shop.order.OrderPlaced.v1: {folder / SNAPSHOT}"]
    assert check_contracts(folder) == []
    return folder


def use_variant(folder: Path, name: str) -> None:
    shutil.copy(FIXTURES / "variants" / f"{name}.yaml", folder / "order" / "OrderPlaced.yaml")


BREAKING = [
    ("field_removed", "note", "optional field removed"),
    ("field_renamed", "orderId", "renamed from 'orderId' to 'orderNumber'?"),
    ("type_changed", "lines[].price", "type changed from decimal (as a string) to integer"),
    ("optional_made_required", "note", "optional made required"),
    ("required_made_optional", "orderId", "required made optional"),
    ("enum_narrowed", "status", "enum narrowed"),
    ("enum_widened", "status", "enum widened"),
    ("nullable_removed", "placedAt", "nullable removed"),
    ("nullable_added", "orderId", "nullable added"),
    ("required_field_added", "currency", "required field added"),
    ("item_type_changed", "lines[]", "list item type changed"),
    ("nested_field_removed", "lines[].quantity", "required field removed"),
]


@pytest.mark.parametrize(("variant", "field", "change"), BREAKING, ids=[b[0] for b in BREAKING])
def test_breaking_change_fails_naming_field_change_and_new_major(published: Path, variant: str, field: str,
                                                                change: str) -> None:
    use_variant(published, variant)
    problems = check_contracts(published)
    assert problems, f"{variant} passed the check"
    text = "\n".join(problems)
    assert f"field '{field}'" in text and change in text and "major 2" in text, text
    assert "OrderPlaced.yaml:" in text and "shop.order.OrderPlaced major 1" in text
    # publish refuses it too, and writes nothing
    before = (published / LOCK_FILE).read_bytes()
    with pytest.raises(ContractError, match="publish refused, nothing written"):
        publish(load_contracts(published))
    assert (published / LOCK_FILE).read_bytes() == before


def test_optional_field_added_with_since_passes_once_published(published: Path) -> None:
    use_variant(published, "optional_field_added")
    assert check_contracts(published) == [
        f"{published}/order/OrderPlaced.yaml:6: revision 1.1 of shop.order.OrderPlaced.v1 is not published: run "
        f"`cdc-bridge contracts publish` and commit {published}/schemas and {published}/{LOCK_FILE}"]
    assert publish(load_contracts(published)) == [
        f"published revision 1.1 of shop.order.OrderPlaced.v1: {published}/schemas/shop.order.OrderPlaced/1.1.schema.json"]
    assert check_contracts(published) == []
    assert sorted(json.loads((published / LOCK_FILE).read_text())) == [
        "shop.order.OrderPlaced 1.0", "shop.order.OrderPlaced 1.1"]


def test_optional_field_added_without_since_asks_for_since(published: Path) -> None:
    use_variant(published, "optional_field_added_without_since")
    problems = check_contracts(published)
    assert len(problems) == 1 and "field 'coupon' is new in revision 1.0" in problems[0]
    assert "give it `since: 1`" in problems[0] and "OrderPlaced.yaml:23:" in problems[0]


def test_documentation_change_asks_for_publish_which_rewrites_the_snapshot(published: Path) -> None:
    use_variant(published, "documentation_changed")
    problems = check_contracts(published)
    assert len(problems) == 1 and "documentation only" in problems[0]
    assert "run `cdc-bridge contracts publish` to update the snapshot" in problems[0]
    written = publish(load_contracts(published))
    assert len(written) == 1 and written[0].startswith("updated revision 1.0 of shop.order.OrderPlaced.v1: documentation only")
    assert "reworded" not in written[0] and check_contracts(published) == []
    assert "The customer checked out the order." in (published / SNAPSHOT).read_text()


def test_hand_edited_snapshot_fails_the_lock(published: Path) -> None:
    snapshot = published / SNAPSHOT
    snapshot.write_text(snapshot.read_text().replace('"The order\'s id."', '"The id."'))
    problems = check_contracts(published)
    assert any("does not match its hash" in p and str(snapshot) in p for p in problems), problems
    with pytest.raises(ContractError, match="holds another hash"):
        publish(load_contracts(published))


def test_missing_snapshot_and_missing_lock_entry(published: Path) -> None:
    (published / SNAPSHOT).unlink()
    problems = check_contracts(published)
    assert len(problems) == 1 and "entry 'shop.order.OrderPlaced 1.0' has no snapshot" in problems[0]
    (published / LOCK_FILE).write_text("{}\n")
    assert check_contracts(published) == [
        f"{published}/order/OrderPlaced.yaml:6: revision 1.0 of shop.order.OrderPlaced.v1 is not published: run "
        f"`cdc-bridge contracts publish` and commit {published}/schemas and {published}/{LOCK_FILE}"]


def test_snapshot_without_lock_entry(published: Path) -> None:
    (published / LOCK_FILE).write_text("{}\n")
    problems = check_contracts(published)
    assert len(problems) == 1 and "has a snapshot but no entry in" in problems[0]


def test_example_that_breaks_a_later_revision_fails(published: Path) -> None:
    use_variant(published, "example_breaks_later_revision")
    text = "\n".join(check_contracts(published))
    assert ("example 0 of shop.order.OrderPlaced.v1 (written for revision 1.0) does not validate against "
            "revision 1.1: 'coupon' is a required property") in text
    assert "field 'coupon': required field added" in text and "major 2" in text


def test_example_checked_by_the_pydantic_model_too(published: Path) -> None:
    text = (published / "order" / "OrderPlaced.yaml").read_text()
    # JSON Schema only sees a string; the strict model wants a decimal, and "6.5x" is none
    (published / "order" / "OrderPlaced.yaml").write_text(text.replace('price: "6.50"', 'price: "6.5x"'))
    problems = check_contracts(published)
    assert len(problems) == 1 and "field 'lines[0].price'" in problems[0] and "(pydantic model)" in problems[0]


def test_removed_revision_is_reported_against_the_latest(published: Path) -> None:
    use_variant(published, "optional_field_added")
    publish(load_contracts(published))
    shutil.copy(FIXTURES / "base" / "order" / "OrderPlaced.yaml", published / "order" / "OrderPlaced.yaml")
    text = "\n".join(check_contracts(published))
    assert "revision 1.1 of shop.order.OrderPlaced.v1 was published" in text
    assert "field 'coupon': optional field removed" in text and "major 2" in text


def test_removed_event_type_is_reported(published: Path) -> None:
    (published / "order" / "OrderPlaced.yaml").unlink()
    problems = check_contracts(published)
    assert len(problems) == 1 and "no contract file declares shop.order.OrderPlaced any more" in problems[0]


def test_a_missing_folder_is_a_problem(tmp_path: Path) -> None:
    assert check_contracts(tmp_path / "nowhere") == [
        f"{tmp_path}/nowhere: no contracts folder (expected contract files like {tmp_path}/nowhere/order/OrderPlaced.yaml)"]


def test_the_repos_contracts_pass() -> None:
    assert check_contracts(REPO_CONTRACTS) == []


def test_cli_check_on_the_repo_exits_0() -> None:
    result = CliRunner().invoke(cli, ["contracts", "check", "--dir", str(REPO_CONTRACTS)])
    assert result.exit_code == 0, result.output
    assert "contracts check: ok" in result.output


def test_cli_exit_codes(published: Path) -> None:
    use_variant(published, "field_removed")
    result = CliRunner().invoke(cli, ["contracts", "check", "--dir", str(published)])
    assert result.exit_code == 1 and "field 'note'" in result.output
    result = CliRunner().invoke(cli, ["contracts", "publish", "--dir", str(published)])
    assert result.exit_code == 1 and "publish refused" in result.output
    (published / "order" / "OrderPlaced.yaml").write_text("type: shop.order.OrderPlaced\n")
    result = CliRunner().invoke(cli, ["contracts", "check", "--dir", str(published)])
    assert result.exit_code == 2, result.output
