"""Replicas sharing one registry folder (``registry_dir``): a change made through one is served by the other.

Two real Parts on their own homes, one shared adapters folder; the first only changes the registry (it never
loads a model), the second serves and follows what the first did through its admin's ``follow`` (what
``switchboard serve`` runs every ``server.follow_s``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from adapters.validation import CONFIG_FILE, WEIGHTS_FILE
from bot.parts import Parts
from bot.turn import TurnRequest


def uploads(folder: Path) -> list[tuple[str, Path]]:
    return [(name, folder / name) for name in (CONFIG_FILE, WEIGHTS_FILE)]


def answered_by(parts: Parts) -> int:
    """The version of the parcels adapter that answers a chat on ``parts``."""
    return parts.pipeline.answer(TurnRequest(message="Where is my parcel?", adapter="parcels")).adapter_version


@pytest.fixture(scope="module")
def pair(make_settings, tmp_path_factory):
    shared = tmp_path_factory.mktemp("shared-adapters")
    a = Parts(make_settings(tmp_path_factory.mktemp("replica-a"), registry_dir=shared))
    b = Parts(make_settings(tmp_path_factory.mktemp("replica-b"), registry_dir=shared))
    return a, b


def test_install_rollback_disable_and_remove_on_one_replica_are_followed_by_the_other(pair, make_random_adapter):
    a, b = pair
    examples = ["Where is my parcel?", "Track my order."]
    first = a.admin.install_adapter(uploads(make_random_adapter(seed=81)), "parcels", examples=examples)
    assert a.settings.adapters_dir == b.settings.adapters_dir != a.settings.home / "adapters"
    b.warm()  # B serves: every part built, the enabled adapters loaded
    assert b.engine.resident_adapters == [first.key] and b.router.adapters == ["parcels"]
    b.admin.follow()  # the first follow takes the registry as B serves it
    assert not b.admin.follow()  # and nothing changed since

    second = a.admin.install_adapter(uploads(make_random_adapter(seed=82)), "parcels", examples=examples)
    assert b.admin.follow()
    assert b.engine.resident_adapters == []  # the old weights left; the new ones load with their first request
    assert not b.admin.follow()  # nothing changed since
    assert answered_by(b) == 2 and b.engine.resident_adapters == [second.key]

    a.admin.rollback_adapter("parcels")
    assert b.admin.follow()
    assert b.engine.resident_adapters == []
    assert answered_by(b) == 1 and b.engine.resident_adapters == [first.key]

    a.admin.set_enabled("parcels", False)
    assert b.admin.follow()
    assert b.engine.resident_adapters == [] and b.router.adapters == []

    b.admin.watch(0.1)  # from here B follows by itself, as a running server does
    a.admin.set_enabled("parcels", True)
    deadline = time.monotonic() + 5
    while b.router.adapters != ["parcels"]:
        assert time.monotonic() < deadline, "the other replica did not follow the change"
        time.sleep(0.05)

    assert answered_by(b) == 1
    a.admin.remove_adapter("parcels")
    deadline = time.monotonic() + 5
    while b.router.adapters or b.engine.resident_adapters:
        assert time.monotonic() < deadline, "the other replica still serves a removed adapter"
        time.sleep(0.05)


def test_health_reports_each_part_with_its_latency(pair):
    _, b = pair
    b.warm()  # a serving replica has built every part (the first test warmed it already)
    report = b.admin.health()
    assert report["status"] == "ok"
    assert set(report["parts"]) == {"registry", "engine", "database", "knowledge"}
    assert all(part["status"] == "ok" and part["latency_ms"] >= 0 for part in report["parts"].values())
