"""One keymap feeds the bindings, the palette, the F1 help and the README: check that they agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tui.app import MacllmApp
from tui.keymap import HELP_SCOPES, KEYMAP, README_SCOPES, SCOPE_TITLES, bindings, display, keys_in, markdown_table
from tui.screens.adapters import AdaptersScreen
from tui.screens.chat import ChatScreen
from tui.screens.help import HelpScreen
from tui.screens.inspector import TokenInspector
from tui.screens.model_picker import ModelPicker
from tui.screens.notes import NotesScreen
from tui.screens.prompt_screen import ConfirmScreen, PromptScreen
from tui.screens.settings_screen import SettingsScreen
from tui.screens.sources import ChunkScreen, SourcesScreen
from tui.screens.train import TrainScreen

README = Path(__file__).resolve().parents[1] / "README.md"
SCREENS = (ChatScreen, TrainScreen, AdaptersScreen, TokenInspector, HelpScreen, SettingsScreen, NotesScreen,
           SourcesScreen, ChunkScreen, ModelPicker, PromptScreen, ConfirmScreen)
HOSTS = {screen.SCOPE: screen for screen in SCREENS} | {"app": MacllmApp}


def readme_key_table() -> str:
    section = README.read_text(encoding="utf-8").split("\n## The app\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^\| key \| does \|\n(?:\|.*\n)+", section, re.M)
    assert match, "README.md's 'The app' section has no key table"
    return match.group(0)


def test_readme_key_table_is_the_keymap():
    assert readme_key_table() == markdown_table(README_SCOPES), (
        "README.md's key table differs from tui/keymap.py: paste the output of `python -m tui.keymap` into it")


@pytest.mark.parametrize("scope", sorted(HOSTS))
def test_bindings_come_from_the_keymap(scope):
    host = HOSTS[scope]
    assert host.BINDINGS == bindings(scope)
    assert scope in SCOPE_TITLES


@pytest.mark.parametrize("key", [k for k in KEYMAP if k.binding or k.palette], ids=lambda k: f"{k.scope}:{k.action}")
def test_every_action_exists(key):
    """A typo in the keymap would be a key that silently does nothing."""
    name = key.action.split("(", 1)[0]
    host = HOSTS[key.scope]
    assert hasattr(host, f"action_{name}") or hasattr(host, f"_action_{name}"), f"{host.__name__} has no {name}"


def test_no_key_does_two_things_in_one_place():
    for scope in HOSTS:
        names = [name for key in keys_in(scope) if key.binding and key.keys for name in key.keys.split(",")]
        assert len(names) == len(set(names)), scope


def test_help_shows_every_documented_key():
    from tui.keymap import help_markdown

    text = help_markdown()
    for scope in HELP_SCOPES:
        assert f"## {SCOPE_TITLES[scope]}" in text
        for key in keys_in(scope):
            if key.documented and key.keys:
                assert f"| {display(key.keys)} | {key.does} |" in text


def test_key_names_read_as_people_write_them():
    assert display("shift+enter,ctrl+j") == "Shift+Enter, Ctrl+J"
    assert display("escape,f1,q") == "Esc, F1, Q"
    assert display("plus,equals_sign") == "+, ="
    assert display("end") == "End"
