"""complete(), inspect() and is_complete() of the interpreter."""

from __future__ import annotations

import pytest
from interp_helpers import make_interpreter

from corral.core import completion


@pytest.fixture()
def interp():
    interpreter, _ = make_interpreter()
    interpreter.execute(
        "import os\n"
        "class Thing:\n"
        "    '''A thing for tests.'''\n"
        "    def method_one(self, a, b=2):\n"
        "        '''Does one.'''\n"
        "        return a\n"
        "    attribute_two = 5\n"
        "thing = Thing()\n"
        "data = {'alpha': 1, 'beta': 2}\n"
    )
    return interpreter


def test_attribute_completion(interp):
    reply = interp.complete("thing.meth")
    assert reply["matches"] == ["method_one"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (6, 10)
    assert reply["metadata"] == {
        "_jupyter_types_experimental": [
            {"start": 6, "end": 10, "text": "method_one", "type": "function", "signature": ""}
        ]
    }


def test_completion_types_for_jupyterlab(interp):
    reply = interp.complete("imp")
    types = {t["text"]: t["type"] for t in reply["metadata"]["_jupyter_types_experimental"]}
    assert types["import"] == "keyword"
    reply = interp.complete("thi")
    types = {t["text"]: t["type"] for t in reply["metadata"]["_jupyter_types_experimental"]}
    assert types["thing"] == "instance"
    reply = interp.complete("%tim")
    assert [t["type"] for t in reply["metadata"]["_jupyter_types_experimental"]] == ["magic"] * len(
        reply["matches"]
    )


def test_completion_mid_text(interp):
    code = "thing.attr + 1"
    reply = interp.complete(code, 10)
    assert "attribute_two" in reply["matches"]
    assert code[reply["cursor_start"] : reply["cursor_end"]] == "attr"


def test_dict_key_completion(interp):
    reply = interp.complete('data["al')
    assert reply["matches"] == ['"alpha"']
    assert reply["cursor_start"] == len("data[")


def test_import_completion(interp):
    reply = interp.complete("import collec")
    assert "collections" in reply["matches"]
    assert reply["cursor_start"] == len("import ")


def test_path_completion(interp, tmp_path):
    (tmp_path / "unique_file_name.txt").write_text("x")
    code = f"open('{tmp_path}/unique_fi"
    reply = interp.complete(code)
    assert reply["matches"] == ["unique_file_name.txt'"]  # jedi closes the string
    assert code[reply["cursor_start"] :] == "unique_fi"


def test_magic_completion(interp):
    reply = interp.complete("%ti")
    assert reply["matches"] == ["%time", "%timeit", "%%time", "%%timeit"]
    assert reply["cursor_start"] == 0
    assert interp.complete("%%wr")["matches"] == ["%%writefile"]


def test_rlcompleter_fallback_when_jedi_fails(interp, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("jedi exploded")

    monkeypatch.setattr(completion, "_jedi", broken)
    reply = interp.complete("thing.meth")
    assert reply["matches"] == ["thing.method_one"]
    assert reply["cursor_start"] == 0


# ------------------------------------------------------------------ inspection


def test_inspect_found_with_signature_and_docstring(interp):
    reply = interp.inspect("thing.method_one(", 10)
    assert reply["found"] is True
    text = reply["data"]["text/plain"]
    assert "Signature: thing.method_one(a, b=2)" in text
    assert "Does one." in text
    assert "return a" not in text


def test_inspect_detail_level_1_adds_source(interp):
    text = interp.inspect("Thing", 3, detail_level=1)["data"]["text/plain"]
    assert "def method_one(self, a, b=2):" in text
    assert "Cell" in text or "<cell-1>" in text


def test_inspect_inside_call_parentheses(interp):
    reply = interp.inspect("thing.method_one(1, ", 20)
    assert reply["found"] and "method_one" in reply["data"]["text/plain"]


def test_inspect_not_found(interp):
    assert interp.inspect("no_such_name") == {
        "status": "ok",
        "found": False,
        "data": {},
        "metadata": {},
    }


def test_question_mark_help_returns_page_payload(interp):
    result = interp.execute("thing.method_one?")
    assert result.status == "ok"
    [page] = result.payload
    assert page["source"] == "page" and page["start"] == 0
    assert "Does one." in page["data"]["text/plain"]
    result = interp.execute("?Thing")
    assert "A thing for tests." in result.payload[0]["data"]["text/plain"]


def test_double_question_mark_shows_source(interp):
    result = interp.execute("Thing??")
    assert "attribute_two = 5" in result.payload[0]["data"]["text/plain"]


def test_help_on_magic_and_unknown_object(interp):
    result = interp.execute("%timeit?")
    assert "mean ± standard deviation" in result.payload[0]["data"]["text/plain"]
    other, rec = make_interpreter()
    result = other.execute("nothing_here?")
    assert result.payload == []
    assert rec.stdout() == "Object `nothing_here` not found.\n"


# ------------------------------------------------------------------ is_complete


@pytest.mark.parametrize(
    ("code", "status", "indent"),
    [
        ("x = 1", "complete", None),
        ("", "complete", None),
        ("for i in range(3):", "incomplete", "    "),
        ("if x:\n    if y:", "incomplete", "        "),
        ("for i in range(3):\n    print(i)", "incomplete", "    "),
        ("for i in range(3):\n    print(i)\n\n", "complete", None),
        ("def f():\n    return 1", "incomplete", ""),
        ("x = (1,", "incomplete", ""),
        ("x = (1,\n     2)", "complete", None),
        ("s = '''abc", "incomplete", ""),
        ("x = 1 +\\", "incomplete", ""),
        ("1 = x", "invalid", None),
        ("x = )", "invalid", None),
        ("%time x", "complete", None),
        ("!ls -la", "complete", None),
        ("x = %pwd", "complete", None),
        ("obj?", "complete", None),
        ("%%time\nx = 1", "incomplete", ""),
        ("%%time\nx = 1\n\n", "complete", None),
    ],
)
def test_is_complete(interp, code, status, indent):
    reply = interp.is_complete(code)
    assert reply["status"] == status
    if indent is None:
        assert "indent" not in reply
    else:
        assert reply["indent"] == indent
