"""Channel length rules: SMS segments, graphemes, Mastodon and X counting, and shortening."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.dispatcher.rendering.limits import (
    ChannelLimit,
    MessageTooLong,
    SmsInfo,
    fit,
    grapheme_count,
    limit_for,
    mastodon_length,
    sms_info,
    x_length,
)

KEEP = "Next update by 15:00 UTC, Mon 23 Nov 2026. https://status.example.com/incidents/42"
BODY = (
    "Card payments are failing for some customers in Europe since 14:30 UTC. "
    "We are sorry. Our engineers are working with the payment provider to restore "
    "service, and orders already placed are safe. Online banking is not affected. "
) * 3
EMOJI = "\U0001f600"
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
FLAG_GB = "\U0001f1ec\U0001f1e7"


def _limit(channel: str, segments: int = 1) -> ChannelLimit:
    limit = limit_for(channel, max_sms_segments=segments)
    assert limit is not None
    return limit


# SMS ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a" * 160, SmsInfo("GSM-7", 160, 1)),
        ("a" * 161, SmsInfo("GSM-7", 161, 2)),
        ("a" * 306, SmsInfo("GSM-7", 306, 2)),
        ("a" * 307, SmsInfo("GSM-7", 307, 3)),
        ("é£Ø§" * 40, SmsInfo("GSM-7", 160, 1)),
        ("ж" * 70, SmsInfo("UCS-2", 70, 1)),
        ("ж" * 71, SmsInfo("UCS-2", 71, 2)),
        ("ж" * 134, SmsInfo("UCS-2", 134, 2)),
        ("ж" * 135, SmsInfo("UCS-2", 135, 3)),
        ("", SmsInfo("GSM-7", 0, 1)),
    ],
)
def test_sms_segments(text: str, expected: SmsInfo) -> None:
    assert sms_info(text) == expected


def test_one_emoji_switches_the_whole_sms_to_ucs2() -> None:
    info = sms_info("a" * 69 + EMOJI)
    assert info == SmsInfo("UCS-2", 71, 2)


def test_extension_characters_take_two_septets() -> None:
    assert sms_info("€").units == 2
    assert sms_info("{").units == 2
    assert sms_info("a" * 79 + "€").segments == 1  # 81 septets
    assert sms_info("{" * 80) == SmsInfo("GSM-7", 160, 1)
    assert sms_info("{" * 80 + "a") == SmsInfo("GSM-7", 161, 2)


def test_escape_pair_at_a_segment_boundary_moves_to_the_next_segment() -> None:
    # 306 septets would be 2 segments of 153, but the pair cannot straddle the boundary.
    assert sms_info("a" * 152 + "€" + "a" * 152) == SmsInfo("GSM-7", 306, 3)
    assert sms_info("a" * 151 + "€" + "a" * 153) == SmsInfo("GSM-7", 306, 2)


def test_surrogate_pair_at_a_segment_boundary_moves_to_the_next_segment() -> None:
    # 134 units would be 2 segments of 67, but the emoji cannot straddle the boundary.
    assert sms_info("ж" * 66 + EMOJI + "ж" * 66) == SmsInfo("UCS-2", 134, 3)
    assert sms_info("ж" * 65 + EMOJI + "ж" * 67) == SmsInfo("UCS-2", 134, 2)


# Graphemes, Mastodon, X -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc", 3),
        ("e\u0301", 1),  # e + combining acute accent
        ("Cafe\u0301 au lait", 12),
        (FLAG_GB, 1),
        (FLAG_GB + "\U0001f1eb\U0001f1f7", 2),
        (FAMILY, 1),
        ("", 0),
    ],
)
def test_grapheme_count(text: str, expected: int) -> None:
    assert grapheme_count(text) == expected


def test_mastodon_counts_every_url_as_23() -> None:
    long_url = "https://status.example.com/incidents/" + "a" * 100
    assert mastodon_length(f"See {long_url} now") == 4 + 23 + 4
    assert mastodon_length("See https://ex.com now") == 4 + 23 + 4


def test_mastodon_url_excludes_trailing_punctuation() -> None:
    assert mastodon_length("(see https://status.example.com/x).") == 5 + 23 + 2


def test_mastodon_counts_a_mention_without_its_domain() -> None:
    assert mastodon_length("cc @ops@hachyderm.io") == len("cc @ops")
    assert mastodon_length("mail ops@example.com") == len("mail ops@example.com")


def test_mastodon_counts_graphemes() -> None:
    assert mastodon_length(FAMILY + "e\u0301") == 2


def test_x_weights_cjk_as_two_and_latin_as_one() -> None:
    assert x_length("abc") == 3
    assert x_length("中文字") == 6
    assert x_length("Ünïcödé") == 7
    assert x_length("\u2014") == 1  # em dash is in a weight-1 range
    assert x_length("\u2026") == 2  # the ellipsis is not


def test_x_counts_urls_as_23() -> None:
    url = "https://status.example.com/incidents/" + "9" * 60
    assert x_length(url) == 23
    assert x_length(f"中 {url}") == 2 + 1 + 23


def test_x_counts_an_emoji_grapheme_as_two() -> None:
    assert x_length(EMOJI) == 2
    assert x_length(FAMILY) == 2
    assert x_length(FLAG_GB) == 2


def test_x_normalises_before_counting() -> None:
    assert x_length("e\u0301") == 1


def test_x_never_undercounts_a_bare_domain() -> None:
    assert x_length("see example.com") == 4 + 23


def test_url_on_a_private_host_counts_at_least_its_length() -> None:
    url = "https://db-1.prod.internal:9100/metrics/endpoint"
    assert x_length(url) == len(url)
    assert mastodon_length(url) == len(url)


# Limits -----------------------------------------------------------------------------------


def test_limits_per_channel() -> None:
    assert limit_for("sms", max_sms_segments=3) == ChannelLimit("sms", 3, "segments")
    assert limit_for("mastodon", max_sms_segments=3) == ChannelLimit("mastodon", 500, "characters")
    assert limit_for("bluesky", max_sms_segments=3) == ChannelLimit("bluesky", 300, "graphemes")
    assert limit_for("x", max_sms_segments=3) == ChannelLimit("x", 280, "weighted characters")


@pytest.mark.parametrize("channel", ["email", "status_page", "slack", "discord", "webhook"])
def test_channels_without_a_hard_limit(channel: str) -> None:
    assert limit_for(channel, max_sms_segments=3) is None


def test_limit_measures_and_fits_in_its_own_unit() -> None:
    sms = _limit("sms", 2)
    assert sms.measure("a" * 161) == 2
    assert sms.fits("a" * 306)
    assert not sms.fits("a" * 307)
    bluesky = _limit("bluesky")
    assert bluesky.fits(FAMILY * 300)
    assert not bluesky.fits("a" * 301)


@pytest.mark.parametrize(
    ("channel", "limit", "unit"),
    [("fax", 10, "pages"), ("sms", 0, "segments"), ("x", 280, "characters")],
)
def test_inconsistent_channel_limit_is_refused(channel: str, limit: int, unit: str) -> None:
    with pytest.raises(ValueError, match=channel):
        ChannelLimit(channel, limit, unit)


# Shortening -------------------------------------------------------------------------------


def test_short_message_is_joined_and_not_shortened() -> None:
    fitted = fit("  We are sorry.  ", f" {KEEP} ", _limit("mastodon"))
    assert fitted.text == f"We are sorry. {KEEP}"
    assert not fitted.shortened
    assert fitted.measured == mastodon_length(fitted.text)
    assert fitted.limit == 500


def test_empty_body_gives_keep_alone() -> None:
    assert fit("", KEEP, _limit("x")).text == KEEP


@pytest.mark.parametrize(
    ("channel", "segments"), [("sms", 1), ("sms", 2), ("bluesky", 1), ("x", 1)]
)
def test_shortening_keeps_the_keep_part_verbatim_and_fits(channel: str, segments: int) -> None:
    limit = _limit(channel, segments)
    fitted = fit(BODY, KEEP, limit)
    assert fitted.shortened
    assert fitted.text.endswith(" " + KEEP)
    assert limit.fits(fitted.text)
    assert fitted.measured == limit.measure(fitted.text) <= fitted.limit


def test_shortening_cuts_at_a_word_boundary_and_marks_the_cut() -> None:
    fitted = fit(BODY, KEEP, _limit("bluesky"))
    body = fitted.text.removesuffix(" " + KEEP)
    assert body.endswith("\u2026")
    cut = body.removesuffix("\u2026")
    assert BODY.startswith(cut)
    assert BODY[len(cut)] in " .,"  # the next character ends a word


def test_shortening_picks_the_longest_body_that_fits() -> None:
    limit = _limit("bluesky")
    fitted = fit(BODY, KEEP, limit)
    cut = fitted.text.removesuffix("\u2026 " + KEEP)
    word_end = BODY.index(" ", len(cut))  # past any punctuation the cut dropped
    next_word_end = BODY.index(" ", word_end + 1)
    longer = f"{BODY[:next_word_end].rstrip('.,')}\u2026 {KEEP}"
    assert len(longer) > len(fitted.text)
    assert not limit.fits(longer)


def test_sms_shortening_stays_gsm7() -> None:
    fitted = fit(BODY, KEEP, _limit("sms", 2))
    assert "..." in fitted.text
    assert "\u2026" not in fitted.text
    assert sms_info(fitted.text).encoding == "GSM-7"


def test_sms_with_unicode_uses_the_single_character_ellipsis() -> None:
    limit = _limit("sms", 3)
    fitted = fit("Платежи картой не проходят. " * 10, KEEP, limit)
    assert fitted.shortened
    assert "\u2026 " + KEEP in fitted.text
    assert sms_info(fitted.text).encoding == "UCS-2"
    assert limit.fits(fitted.text)


def test_body_without_spaces_is_cut_between_graphemes() -> None:
    fitted = fit(FAMILY * 400, KEEP, _limit("bluesky"))
    body = fitted.text.removesuffix("\u2026 " + KEEP)
    assert body == FAMILY * grapheme_count(body)
    assert grapheme_count(body) > 0


def test_keep_that_cannot_fit_raises() -> None:
    with pytest.raises(MessageTooLong, match=r"x: .* 300 weighted characters, .* 280") as raised:
        fit("We are sorry.", "a" * 300, _limit("x"))
    assert raised.value.measured == 300
    assert raised.value.limit == 280
    assert isinstance(raised.value, ValueError)


@given(body=st.text(max_size=600))
@pytest.mark.parametrize(
    ("channel", "segments"), [("sms", 1), ("mastodon", 1), ("bluesky", 1), ("x", 1)]
)
def test_fit_always_fits_and_ends_with_keep(channel: str, segments: int, body: str) -> None:
    limit = _limit(channel, segments)
    fitted = fit(body, KEEP, limit)
    assert limit.fits(fitted.text)
    assert fitted.text.endswith(KEEP)
    assert fitted.shortened == (fitted.text != " ".join(p for p in (body.strip(), KEEP) if p))
