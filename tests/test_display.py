"""The display protocol: MIME bundles from _repr_*_ methods, display/update/clear posts."""

from __future__ import annotations

import base64

import pytest
from interp_helpers import Recorder, make_interpreter

from corral.core import display as core_display
from corral.core import events
from corral.display import (
    HTML,
    JSON,
    Image,
    Markdown,
    Pretty,
    clear_output,
    display,
    format_object,
    update_display,
)
from corral.notification.center import shared_center


@pytest.fixture(autouse=True)
def corral_formatting(monkeypatch):
    """These tests check corral's own formatting rules, not IPython's (which an interpreter
    adopts once another test in this process has imported IPython)."""
    monkeypatch.setattr(core_display, "_formatter", None)


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 16


class Rich:
    def _repr_html_(self):
        return "<b>rich</b>"

    def _repr_markdown_(self):
        return "**rich**"

    def _repr_png_(self):
        return PNG

    def _repr_jpeg_(self):
        return JPEG

    def _repr_svg_(self):
        return "<svg/>"

    def _repr_json_(self):
        return {"a": 1}

    def _repr_latex_(self):
        return r"$x^2$"

    def __repr__(self):
        return "Rich()"


class Bundle:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": "<i>b</i>", "application/x-custom": "c"}, {"text/html": {"k": 1}}


class Partial:
    def _repr_html_(self):
        return None  # declines


class Broken:
    def _repr_html_(self):
        raise ValueError("nope")


def test_every_repr_method_becomes_its_mime_type():
    data, metadata = format_object(Rich())
    assert data == {
        "text/html": "<b>rich</b>",
        "text/markdown": "**rich**",
        "image/png": base64.b64encode(PNG).decode(),
        "image/jpeg": base64.b64encode(JPEG).decode(),
        "image/svg+xml": "<svg/>",
        "application/json": {"a": 1},
        "text/latex": "$x^2$",
        "text/plain": "Rich()",
    }
    assert metadata == {}


def test_mimebundle_with_metadata_and_plain_added():
    data, metadata = format_object(Bundle())
    assert data["text/html"] == "<i>b</i>"
    assert data["application/x-custom"] == "c"
    assert data["text/plain"].startswith("<")  # repr fallback is always there
    assert metadata == {"text/html": {"k": 1}}


def test_include_exclude():
    data, _ = format_object(Rich(), include={"text/html", "text/plain"})
    assert set(data) == {"text/html", "text/plain"}
    data, _ = format_object(Rich(), exclude={"image/png", "image/jpeg"})
    assert "image/png" not in data and "text/html" in data


def test_declining_and_broken_repr_methods(capsys):
    assert set(format_object(Partial())[0]) == {"text/plain"}
    data, _ = format_object(Broken())
    assert set(data) == {"text/plain"}
    assert "ValueError" in capsys.readouterr().err


def test_class_object_is_not_shown_through_instance_methods():
    data, _ = format_object(Rich)
    assert set(data) == {"text/plain"}
    assert "Rich" in data["text/plain"]


def test_plain_text_is_pretty_printed():
    big = {f"key{i}": list(range(10)) for i in range(5)}
    text = format_object(big)[0]["text/plain"]
    assert "\n" in text and text.startswith("{'key0'")


def test_long_strings_stay_one_literal():
    """As IPython shows them: pprint's cut into adjacent literals reads as a tuple."""
    text = "hello world " * 10
    assert format_object(text)[0]["text/plain"] == repr(text)
    assert format_object(text.encode())[0]["text/plain"] == repr(text.encode())
    assert format_object([text, 1])[0]["text/plain"] == f"[{text!r},\n 1]"


def test_repr_pretty_gives_plain_text():
    """Libraries that define only ``_repr_pretty_`` show their text, as under ipykernel."""
    pytest.importorskip("IPython")

    class Pretty:
        def _repr_pretty_(self, printer, cycle):
            printer.text("pretty!")

    assert format_object(Pretty())[0] == {"text/plain": "pretty!"}


def test_wrappers():
    assert format_object(HTML("<p>x</p>"))[0]["text/html"] == "<p>x</p>"
    assert format_object(Markdown("# t"))[0]["text/markdown"] == "# t"
    data, md = format_object(JSON('{"x": [1, 2]}', expanded=True))
    assert data["application/json"] == {"x": [1, 2]}
    assert md == {"application/json": {"expanded": True}}
    assert format_object(Pretty("just text"))[0] == {"text/plain": "just text"}
    data, md = format_object(Image(PNG, width=10))
    assert data["image/png"] == base64.b64encode(PNG).decode()
    assert md == {"image/png": {"width": 10}}
    assert "image/jpeg" in format_object(Image(JPEG))[0]


def test_image_from_file(tmp_path):
    path = tmp_path / "pic.jpg"
    path.write_bytes(JPEG)
    data, _ = format_object(Image(filename=path))
    assert data["image/jpeg"] == base64.b64encode(JPEG).decode()
    data, _ = format_object(Image(str(path)))
    assert "image/jpeg" in data
    with pytest.raises(ValueError):
        Image(PNG, format="gif")


def test_display_in_cell_posts_display_data():
    interp, rec = make_interpreter()
    interp.execute("from corral.display import HTML\ndisplay(HTML('<b>x</b>'), 5)")
    shown = rec.of(events.DISPLAY_DATA)
    assert [d["data"].get("text/html") for d in shown] == ["<b>x</b>", None]
    assert shown[1]["data"] == {"text/plain": "5"}
    assert shown[0]["transient"] == {}
    assert all(sender is interp for t, sender, _ in rec.seen if t == events.DISPLAY_DATA)
    # display() is not the cell's result
    assert rec.of(events.EXECUTE_RESULT) == []


def test_display_id_update_and_clear():
    interp, rec = make_interpreter()
    interp.execute(
        "from corral.display import update_display, clear_output\n"
        "h = display('one', display_id='d1')\n"
        "update_display('two', display_id='d1')\n"
        "h.update('three')\n"
        "auto = display('x', display_id=True)\n"
        "clear_output(wait=True)\n"
        "clear_output()"
    )
    shown = rec.of(events.DISPLAY_DATA)
    assert shown[0]["transient"] == {"display_id": "d1"}
    updates = rec.of(events.UPDATE_DISPLAY_DATA)
    assert [u["data"]["text/plain"] for u in updates] == ["'two'", "'three'"]
    assert all(u["transient"] == {"display_id": "d1"} for u in updates)
    auto_id = shown[1]["transient"]["display_id"]
    assert len(auto_id) == 32 and interp.user_ns["auto"].display_id == auto_id
    assert rec.of(events.CLEAR_OUTPUT) == [{"wait": True}, {"wait": False}]


def test_display_raw_bundle_and_metadata():
    interp, rec = make_interpreter()
    interp.execute(
        "display({'text/html': '<i>r</i>', 'text/plain': 'r'}, raw=True, metadata={'m': 1},"
        " transient={'t': 2})"
    )
    shown = rec.of(events.DISPLAY_DATA)[0]
    assert shown == {
        "data": {"text/html": "<i>r</i>", "text/plain": "r"},
        "metadata": {"m": 1},
        "transient": {"t": 2},
    }


def test_display_without_interpreter_posts_to_shared_center(monkeypatch):
    monkeypatch.setattr(core_display, "_current", None)
    rec = Recorder(shared_center)
    try:
        display(HTML("<p/>"))
        clear_output()
        update_display("u", display_id="z")
    finally:
        shared_center.remove_observer(rec)
    assert [t for t in rec.types()] == [
        events.DISPLAY_DATA,
        events.CLEAR_OUTPUT,
        events.UPDATE_DISPLAY_DATA,
    ]
    assert {sender for _, sender, _ in rec.seen} == {"corral.display"}


def test_display_after_execute_goes_to_last_interpreter():
    interp, rec = make_interpreter()
    interp.execute("pass")
    rec.clear()
    display("late")  # e.g. from a background thread after the cell finished
    assert rec.of(events.DISPLAY_DATA)[0]["data"] == {"text/plain": "'late'"}


def test_result_uses_rich_repr():
    interp, rec = make_interpreter()
    interp.user_ns["Rich"] = Rich
    interp.execute("Rich()")
    data = rec.of(events.EXECUTE_RESULT)[0]["data"]
    assert data["text/html"] == "<b>rich</b>" and data["text/plain"] == "Rich()"


class ShowsItself:
    """IPython's ``_ipython_display_`` protocol: the object publishes for itself."""

    def _ipython_display_(self):
        display(HTML("<i>by itself</i>"))

    def _repr_html_(self):  # never used: _ipython_display_ takes over
        return "<b>not this</b>"


def test_ipython_display_method_takes_over_display_and_results():
    interp, rec = make_interpreter()
    interp.user_ns["ShowsItself"] = ShowsItself
    interp.execute("display(ShowsItself())\nShowsItself()")
    shown = [d["data"].get("text/html") for d in rec.of(events.DISPLAY_DATA)]
    assert shown == ["<i>by itself</i>", "<i>by itself</i>"]
    assert rec.of(events.EXECUTE_RESULT) == []  # no repr of it as the cell's result
    assert interp.user_ns["_"].__class__ is ShowsItself  # yet it is the cell's value
