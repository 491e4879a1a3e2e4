"""The stream settings FastStream copies on every read stay equal to what was configured."""

from __future__ import annotations

import copy

from shared.consumer import StreamSettings


def test_a_prefixed_copy_names_the_prefixed_stream_and_leaves_the_original_alone() -> None:
    settings = StreamSettings(
        "clarion:jobs", group="workers", consumer="c-1", max_records=7, polling_interval=250
    )

    prefixed = settings.add_prefix("tenant:")

    assert isinstance(prefixed, StreamSettings)
    assert prefixed is not settings
    assert prefixed.name == "tenant:clarion:jobs"
    assert settings.name == "clarion:jobs"
    assert (prefixed.group, prefixed.consumer, prefixed.max_records) == ("workers", "c-1", 7)
    assert (prefixed.polling_interval, prefixed.last_id) == (250, ">")


def test_a_deep_copy_is_an_equal_separate_object() -> None:
    settings = StreamSettings("clarion:jobs", group="workers", consumer="c-1", min_idle_time=500)

    copied = copy.deepcopy(settings)
    copied.name = "changed"

    assert settings.name == "clarion:jobs"
    assert copied.min_idle_time == 500
    assert copied.group == "workers"
