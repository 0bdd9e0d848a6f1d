"""The shared registry (diagnose/registry.py): lazy import targets, unknown-name errors, the spec grammar and
option coercion that objectives, tasks, teacher contexts and engines all use."""

from __future__ import annotations

import sys

import pytest

from diagnose.errors import DiagnoseError
from diagnose.registry import Registry, SpecError, UnknownName, coerce, parse_spec


def test_lazy_target_is_imported_only_on_lookup(tmp_path, monkeypatch):
    (tmp_path / "lazy_plugin_mod.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_plugin_mod", raising=False)
    reg = Registry("widget")
    reg.add("thing", "lazy_plugin_mod:Thing", {"size": 1})
    assert reg.available() == ["thing"] and "thing" in reg and reg.defaults("thing") == {"size": 1}
    assert "lazy_plugin_mod" not in sys.modules  # listing and defaults import nothing
    cls, dflt = reg.lookup("thing")
    assert "lazy_plugin_mod" in sys.modules and cls is sys.modules["lazy_plugin_mod"].Thing
    assert dflt == {"size": 1} and reg.get("thing") is cls


def test_bad_targets_fail_clearly(tmp_path, monkeypatch):
    reg = Registry("widget")
    with pytest.raises(ValueError, match="package.module:object"):
        reg.add("bad", "no_colon_here")
    reg.add("missing_module", "no_such_module_xyz:Thing")
    with pytest.raises(DiagnoseError, match="cannot import no_such_module_xyz") as err:
        reg.get("missing_module")
    assert "\n" not in str(err.value)
    (tmp_path / "lazy_plugin_empty.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg.add("missing_attr", "lazy_plugin_empty:Thing")
    with pytest.raises(DiagnoseError, match="does not exist"):
        reg.get("missing_attr")


def test_unknown_name_lists_the_choices():
    reg = Registry("widget", hint=" (or a file)")

    @reg.register("b", n=1)
    class B:
        pass

    reg.add("a", object())
    with pytest.raises(UnknownName) as err:
        reg.lookup("zzz")
    assert str(err.value) == "unknown widget 'zzz'; available: a, b (or a file)"
    assert isinstance(err.value, DiagnoseError) and isinstance(err.value, KeyError)
    assert err.value.choices == ["a", "b"] and B.name == "b"
    with pytest.raises(UnknownName):
        reg.defaults("zzz")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", object())
    reg.add("a", object(), replace=True)
    ordered = Registry("widget", sort=False)
    ordered.add("z", 1, doc="last letter")
    ordered.add("sys", 2, {"value": None}, doc="takes a value", label="sys=<text>")
    assert ordered.available() == ["z", "sys"] and ordered.choices() == ["z", "sys=<text>"]
    assert dict(ordered.listing()) == {"z": "last letter", "sys=<text>": "takes a value"}
    with pytest.raises(ValueError, match="without"):
        ordered.add("a:b", 3)


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("jsd", ("jsd", {})),
        ("  jsd  ", ("jsd", {})),
        ("jsd:", ("jsd", {})),
        ("jsd:beta=0.5", ("jsd", {"beta": "0.5"})),
        ("rkl_topk: k = 8 , support=union,", ("rkl_topk", {"k": "8", "support": "union"})),
        ("file:path=C:/data/x.jsonl", ("file", {"path": "C:/data/x.jsonl"})),  # only the first ':' splits
        ("t:a=1=2", ("t", {"a": "1=2"})),  # only the first '=' of a part splits
        ("t:a=", ("t", {"a": ""})),
        ("t:a=1,a=2", ("t", {"a": "2"})),  # the last value wins
    ],
)
def test_spec_grammar(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("", "empty widget spec; available: a, b"),
        (":k=1", "has no name"),
        ("a:k", "expected key=value, got 'k'"),
        ("a:=1", "expected key=value, got '=1'"),
    ],
)
def test_spec_errors_are_one_line(spec, needle):
    with pytest.raises(SpecError) as err:
        parse_spec(spec, "widget", ["a", "b"])
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, DiagnoseError) and isinstance(err.value, ValueError)


def test_coercion_types_values_as_the_default_is():
    assert coerce("task", "t", "n", "3", 1) == 3 and coerce("task", "t", "n", "3.0", 1) == 3
    assert coerce("task", "t", "n", 3.0, 1) == 3 and coerce("task", "t", "x", "2", 1.0) == 2.0
    assert coerce("task", "t", "x", 2, 1.0) == 2.0 and isinstance(coerce("task", "t", "x", 2, 1.0), float)
    assert coerce("task", "t", "s", "abc", "d") == "abc" and coerce("task", "t", "p", 7, None) == 7
    assert coerce("task", "t", "f", "Yes", False) is True and coerce("task", "t", "f", "0", True) is False
    assert coerce("task", "t", "n", 10**30, 1) == 10**30 and coerce("task", "t", "n", str(10**30), 1) == 10**30


@pytest.mark.parametrize(
    "value,default,needle",
    [
        ("x", 1, "option n=x is not an int"),
        ("2.5", 1, "n=2.5 is not an int"),
        (2.5, 1, "n=2.5 is not an int"),
        ("high", 0.5, "n=high is not a float"),
        ("maybe", False, "n=maybe is not a bool"),
        ("line\nbreak", 1, "n='line\\nbreak' is not an int"),
    ],
)
def test_coercion_errors_are_one_line(value, default, needle):
    with pytest.raises(SpecError) as err:
        coerce("task", "t", "n", value, default)
    assert needle in str(err.value) and str(err.value).startswith("task 't': ") and "\n" not in str(err.value)


def test_options_check_names_and_types():
    reg = Registry("objective", word="parameter")
    reg.add("jsd", object(), {"beta": 0.5})
    assert reg.options("jsd", {"beta": "1"}) == {"beta": 1.0} and reg.options("jsd", {}) == {"beta": 0.5}
    with pytest.raises(SpecError, match=r"objective 'jsd' has no parameter gamma \(allowed: beta\)"):
        reg.options("jsd", {"gamma": 1})
    with pytest.raises(SpecError, match="parameter beta=x is not a float"):
        reg.options("jsd", reg.parse("jsd:beta=x")[1])
