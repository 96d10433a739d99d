"""Control tokens the command line can take as typed (`ctl ... --token TOKEN`)."""

from __future__ import annotations

import itertools
import secrets

from pulsetrain.runtime import control


def test_a_new_token_never_starts_with_a_dash(monkeypatch):
    # token_urlsafe draws from A-Z a-z 0-9 - _: one token in 64 starts with "-", which argparse
    # reads as an option ("--token: expected one argument").
    drawn = itertools.chain(["-starts-with-a-dash", "-again"], iter(lambda: "fine_token", None))
    monkeypatch.setattr(secrets, "token_urlsafe", lambda nbytes=None: next(drawn))
    assert control.new_token() == "fine_token"


def test_new_tokens_are_long_and_distinct():
    tokens = {control.new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    assert all(len(t) >= 32 and not t.startswith("-") for t in tokens)
