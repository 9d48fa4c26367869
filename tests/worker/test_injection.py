"""What the PTY worker types for a delivery, how it recognises the echo, its delivery book."""

from __future__ import annotations

import pytest

from trio_relay.worker.pty.book import Delivery, DeliveryBook, Settled
from trio_relay.worker.pty.echo import EchoMatcher, format_message, normalize


def test_format_message_makes_control_characters_and_newlines_harmless() -> None:
    assert format_message("a", "d1", "hi") == "Relay message from a [d1]: hi"
    # Without bracketed paste a newline would be Enter: it becomes a space.
    assert format_message("a", "d1", "hi\ntouch f\r\nx\ry") == (
        "Relay message from a [d1]: hi touch f  x y"
    )
    assert (
        format_message("a", "d1", "\x1b[201~\x03\x7f\x9b") == "Relay message from a [d1]:  [201~   "
    )
    # In a bracketed paste newlines are text; every other control character is still a space
    # (so the body cannot end the paste early with its own ESC[201~).
    assert format_message("a", "d1", "one\r\ntwo\rthree\n\x1b[201~", multiline=True) == (
        "Relay message from a [d1]: one\ntwo\nthree\n [201~"
    )


def test_normalize_drops_whitespace_and_box_decoration_but_keeps_punctuation() -> None:
    assert normalize(" a b\n│ c ┃▌|d ╰─╯ [x]: ") == "abcd[x]:"


def test_the_echo_is_found_across_pieces_wrapping_and_borders() -> None:
    text = format_message("bob", "d7", "a message long enough to wrap in the box")
    matcher = EchoMatcher(text)
    for piece in [
        "╭──────────────╮",
        "│ Relay message from bob │",
        "│ [d7]: a message long │",
        "│ enough to wrap in │",
        "│ the box │",
    ]:
        found = matcher.feed(piece)
    assert found and matcher.found
    screen = (
        "╭───╮\n│ Relay message from bob [d7]: a │\n│ message long enough to wrap │\n│ in the box │"
    )
    assert EchoMatcher(text).check_text(screen)


def test_a_short_message_is_not_verified_by_unrelated_text() -> None:
    matcher = EchoMatcher(format_message("a", "d1", "hi"))
    assert not matcher.check_text("hi\nhi there\nRelay message from a [d2]: hi")
    # Without the punctuation d1 + "0 hello" would read like d10 + "hello".
    matcher = EchoMatcher(format_message("a", "d1", "0 hello"))
    assert not matcher.check_text(format_message("a", "d10", "hello"))
    assert not matcher.feed(format_message("a", "d10", "hello"))


def test_the_reason_for_a_miss_says_what_was_seen() -> None:
    matcher = EchoMatcher(format_message("a", "d1", "hello world"))
    assert matcher.describe_miss() == "nothing was drawn"
    matcher.feed("$ ")
    matcher.feed("Relay message from a [d1]: hel")
    assert not matcher.found
    needle = len(matcher.needle)
    assert matcher.describe_miss() == (
        f"26 characters were drawn; at most the first 25 of the message's {needle} appeared"
    )


def test_the_delivery_book() -> None:
    book = DeliveryBook("hold", remember=2)
    assert book.add(Delivery("h1", "a", "x"))
    assert not book.add(Delivery("h1", "a", "x"))  # known: not added twice
    assert book.pending()[0]["state"] == "held" and not book.busy
    assert book.next() is None  # held deliveries are not typed
    assert book.set_mode("auto_inject") == 1
    assert book.add(Delivery("q2", "a", "y"))
    current = book.next()
    assert current is not None and current.delivery_id == "h1" and current.state == "typing"
    assert book.next() is None  # one in flight at a time
    assert [d["delivery_id"] for d in book.pending()] == ["h1", "q2"]
    assert book.settle(Settled("echo")).delivery_id == "h1"
    assert book.known("h1") and book.settled("h1") == Settled("echo")
    book.next()
    book.settle(Settled("timeout_fallback", "why"))
    book.add(Delivery("q3", "a", "z"))
    book.next()
    book.settle(Settled("failed", "no"))
    assert not book.known("h1")  # only the last `remember` outcomes are kept
    assert book.settled("q3") == Settled("failed", "no")
    with pytest.raises(LookupError):
        book.settle(Settled("echo"))
    with pytest.raises(ValueError):
        book.set_mode("sometimes")  # type: ignore[arg-type]
    assert book.flush() == 0
