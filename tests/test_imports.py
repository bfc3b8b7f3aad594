"""Imports flow one way: cait (the model, data and training) never reaches up into pipelines (the harness),
and neither package has an import cycle."""

from __future__ import annotations

from import_graph import cycles, import_graph

# The model card command trains through the harness's train stage (MLflow tracking included) until the
# training session moves into cait (issue 12, move 2): the one arrow that still runs up, named here.
KNOWN_UPWARD = {"cait.run": {"pipelines.cli", "pipelines.params", "pipelines.stages.train"}}


def test_cait_does_not_import_pipelines():
    upward = {name: {t for t in targets if t.startswith("pipelines")}
              for name, targets in import_graph().items() if name.startswith("cait")}
    upward = {name: targets for name, targets in upward.items() if targets}
    assert upward == KNOWN_UPWARD, f"cait modules importing pipelines: {upward}"


def test_no_import_cycles():
    graph = import_graph()
    assert cycles(graph) == [], f"import cycles: {cycles(graph)}"


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
