"""The Grafana dashboard's builder: the shipped file is the code's, and every panel is well formed."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from guardedmodel_cli import dashboard
from guardedmodel_cli.dashboard import Variables, queries

DOCUMENT = dashboard.dashboard()
PANELS = [panel for panel in DOCUMENT["panels"] if panel["type"] != "row"]
VARIABLES = {variable["name"]: variable for variable in DOCUMENT["templating"]["list"]}


def test_the_shipped_file_is_the_builders_output() -> None:
    path = dashboard.shipped_path()
    assert path.read_text() == dashboard.render(), "run: python -m guardedmodel_cli.dashboard"
    assert dashboard.main(["--check"]) == 0


def test_check_names_a_stale_file(tmp_path: Any, capsys: Any) -> None:
    stale = tmp_path / "dashboard.json"
    stale.write_text(dashboard.render().replace("Requests by decision", "Requests"))
    assert dashboard.main(["--check", f"--path={stale}"]) == 1
    assert str(stale) in capsys.readouterr().out
    assert dashboard.main([f"--path={stale}"]) == 0
    assert dashboard.main(["--check", f"--path={stale}"]) == 0


def test_ids_and_titles_are_unique() -> None:
    ids = [panel["id"] for panel in DOCUMENT["panels"]]
    assert len(ids) == len(set(ids))
    titles = [panel["title"] for panel in PANELS]
    assert len(titles) == len(set(titles))


@pytest.mark.parametrize("panel", PANELS, ids=lambda panel: panel["title"])
def test_every_panel_queries_the_chosen_datasource_for_the_chosen_model(panel: dict[str, Any]) -> None:
    assert panel["targets"], "a panel without a query shows nothing"
    assert panel["description"]
    assert panel["datasource"]["uid"] == "${datasource}"
    ref_ids = [target["refId"] for target in panel["targets"]]
    assert len(ref_ids) == len(set(ref_ids))
    for target in panel["targets"]:
        assert target["datasource"]["uid"] == "${datasource}"
        assert target["legendFormat"]
        # Every metric selector is narrowed to the chosen namespace and model.
        selectors = re.findall(r"(guardedmodel_\w+)\{([^}]*)\}", target["expr"])
        assert selectors, target["expr"]
        for metric, labels in selectors:
            assert 'namespace=~"$namespace"' in labels, (metric, labels)
            model_label = "name" if metric.startswith("guardedmodel_operator_") else "guardedmodel_io_name"
            assert f'{model_label}=~"$model"' in labels, (metric, labels)


def test_panels_tile_the_grid_without_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in DOCUMENT["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= dashboard.GRID_WIDTH
        mine = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine


def test_the_variables_chain_datasource_namespace_model() -> None:
    assert VARIABLES["datasource"]["type"] == "datasource"
    assert VARIABLES["datasource"]["query"] == "prometheus"
    for name in ("namespace", "model"):
        assert VARIABLES[name]["datasource"]["uid"] == "${datasource}"
        assert VARIABLES[name]["allValue"] == ".*"  # the queries match with =~
    assert "$namespace" in VARIABLES["model"]["query"]["query"]


def test_annotations_mark_rollout_steps_and_rollbacks_from_the_operators_metrics() -> None:
    found = [query for query in queries(DOCUMENT) if query.annotation]
    assert {query.panel for query in found} == {"Rollout steps", "Rollbacks"}
    for query in found:
        assert "guardedmodel_operator_" in query.expr
    for annotation in DOCUMENT["annotations"]["list"][1:]:
        assert annotation["datasource"]["uid"] == "${datasource}"


def test_variables_substitute_every_placeholder() -> None:
    values = Variables(namespace="ml", model="toy", rate_interval="10s")
    for query in queries(DOCUMENT):
        expr = values.substitute(query.expr)
        assert "$" not in expr, expr
    # A longer name is replaced whole, not by a shorter name's value.
    assert Variables("a", "b", "1m", {"$model_x": "c"}).substitute("$model_x $model") == "c b"


def test_the_document_is_json_grafana_loads() -> None:
    text = dashboard.render()
    assert json.loads(text) == DOCUMENT
    assert DOCUMENT["uid"] == "guardedmodel" and DOCUMENT["schemaVersion"] >= 36


def test_the_png_legends_fill_grafanas_placeholders() -> None:
    from guardedmodel_cli.dashboard_png import legend

    assert legend("v{{version}} {{ decision }}", {"version": "2", "decision": "review"}) == "v2 review"
    assert legend("{{outcome}} /s", {}) == " /s"  # a label the series lacks is empty, as in Grafana
    for panel in PANELS:
        for target in panel["targets"]:
            assert "{{" not in legend(target["legendFormat"], {}), target["legendFormat"]
