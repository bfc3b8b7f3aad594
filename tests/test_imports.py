"""Imports flow one way: cait (the model, data and training) never reaches up into pipelines (the harness),
and neither package has an import cycle."""

from __future__ import annotations

from import_graph import cycles, import_graph


def test_cait_does_not_import_pipelines():
    upward = {name: {t for t in targets if t.startswith("pipelines")}
              for name, targets in import_graph().items() if name.startswith("cait")}
    upward = {name: targets for name, targets in upward.items() if targets}
    assert upward == {}, f"cait modules importing pipelines: {upward}"


def test_no_stage_imports_another_stage():
    """Stages talk through the files they write (the brief's one-way data flow); what two of them share lives
    in pipelines/ (e.g. pipelines/training.py for every command that trains)."""
    across = {name: {t for t in targets if t.startswith("pipelines.stages.") and t != name}
              for name, targets in import_graph().items() if name.startswith("pipelines.stages.")}
    across = {name: targets for name, targets in across.items() if targets}
    assert across == {}, f"stages importing other stages: {across}"


def test_no_import_cycles():
    graph = import_graph()
    assert cycles(graph) == [], f"import cycles: {cycles(graph)}"


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_session_writes_where_the_layout_says():
    """cait.session cannot import pipelines.layout, so it names its folders itself: the same names."""
    from cait import session
    from pipelines import layout

    assert session.CHECKPOINTS == layout.CHECKPOINTS and session.FINGERPRINTS == layout.FINGERPRINTS
    assert layout.SHARDS_DIR == layout.PREPARED_DIR / session.SHARDS
