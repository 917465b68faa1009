"""The private Twisted attributes s3balance relies on: present in the running Twisted, a loud
start-up failure when a required one is missing, and the fallback of each other one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.testing import StringTransport

import twisted
from s3balance.net import twistedcompat
from s3balance.web import site as site_module
from s3balance.web.site import S3Site

#: Every private attribute we rely on, by owner; the compat module must list exactly these.
REQUIRED = {
    ("HTTPChannel", "_command"),
    ("HTTPChannel", "_path"),
    ("HTTPChannel", "_version"),
    ("HTTPChannel", "_savedTimeOut"),
    ("HTTPChannel", "_handlingRequest"),
    ("HTTPChannel", "_requestProducer"),
    ("HTTPChannel", "_waitingForTransport"),
    ("HTTPChannel", "_abortingCall"),
    ("HTTPChannel", "_maybeChooseTransferDecoder"),
    ("HTTPChannel", "_respondToBadRequestAndDisconnect"),
}
DEGRADABLE = {
    ("HTTPChannel", "_send100Continue"),
    ("HTTPChannel", "_networkProducer"),
    ("FileDescriptor", "_tempDataBuffer"),
    ("FileDescriptor", "_tempDataLen"),
}


def test_the_compat_module_lists_exactly_the_attributes_named_here() -> None:
    assert set(twistedcompat.REQUIRED) == REQUIRED
    assert set(twistedcompat.DEGRADABLE) == DEGRADABLE


@pytest.mark.parametrize("owner,attribute", sorted(REQUIRED | DEGRADABLE))
def test_the_running_twisted_has(owner: str, attribute: str) -> None:
    samples = twistedcompat._samples()
    assert hasattr(samples[owner], attribute), (
        f"Twisted {twisted.__version__} has no {owner}.{attribute}"
    )


def test_the_running_twisted_needs_no_fallback() -> None:
    assert twistedcompat.check_twisted() == []


def _samples_without(owner: str, attribute: str) -> dict[str, Any]:
    """The real sample objects, but ``owner``'s stand-in lacks ``attribute``."""
    samples = twistedcompat._samples()
    kept = {
        name: getattr(samples[owner], name)
        for who, name in REQUIRED | DEGRADABLE
        if who == owner and name != attribute
    }
    samples[owner] = SimpleNamespace(**kept)
    return samples


@pytest.mark.parametrize("owner,attribute", sorted(REQUIRED))
def test_a_missing_required_attribute_fails_loudly(owner: str, attribute: str) -> None:
    with pytest.raises(twistedcompat.TwistedIncompatible) as raised:
        twistedcompat.check_twisted(_samples_without(owner, attribute))
    message = str(raised.value)
    assert f"{owner}.{attribute}" in message
    assert twisted.__version__ in message


@pytest.mark.parametrize("owner,attribute", sorted(DEGRADABLE))
def test_a_missing_degradable_attribute_is_reported(owner: str, attribute: str) -> None:
    assert twistedcompat.check_twisted(_samples_without(owner, attribute)) == [
        f"{owner}.{attribute}"
    ]


def test_the_site_refuses_to_start_on_an_incompatible_twisted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def incompatible() -> tuple[str, ...]:
        raise twistedcompat._missing("HTTPChannel", "_command", "test")

    monkeypatch.setattr(twistedcompat, "check_running_twisted", incompatible)
    with pytest.raises(twistedcompat.TwistedIncompatible, match="HTTPChannel._command"):
        S3Site(SimpleNamespace(), lambda *args: False)  # type: ignore[arg-type]


def test_the_site_warns_of_each_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    warned: list[dict[str, Any]] = []
    monkeypatch.setattr(
        twistedcompat, "check_running_twisted", lambda: ("HTTPChannel._send100Continue",)
    )
    monkeypatch.setattr(site_module.log, "warn", lambda text, **fields: warned.append(fields))
    S3Site(SimpleNamespace(), lambda *args: False)  # type: ignore[arg-type]
    assert warned == [{"attribute": "HTTPChannel._send100Continue"}]


# -- the fallbacks ---------------------------------------------------------------------------------


def test_100_continue_without_twisteds_method_is_written_by_us() -> None:
    transport = StringTransport()
    twistedcompat.send_100_continue(SimpleNamespace(transport=transport))
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_100_continue_uses_twisteds_method_when_present() -> None:
    sent: list[bool] = []
    twistedcompat.send_100_continue(SimpleNamespace(_send100Continue=lambda: sent.append(True)))
    assert sent == [True]


def test_client_reads_are_paused_through_the_transport_without_a_network_producer() -> None:
    transport = StringTransport()
    producer = twistedcompat.network_producer(SimpleNamespace(transport=transport))
    producer.pauseProducing()
    assert transport.producerState == "paused"
    producer.resumeProducing()
    assert transport.producerState == "producing"


def test_without_the_unsent_buffer_no_zero_copy() -> None:
    assert not twistedcompat.can_take_unsent(SimpleNamespace(dataBuffer=b"", offset=0))
    assert twistedcompat.can_take_unsent(twistedcompat._samples()["FileDescriptor"])


def test_the_unsent_buffer_is_taken_and_emptied() -> None:
    transport = twistedcompat._samples()["FileDescriptor"]
    transport._tempDataBuffer = [b"ab", b"cd"]
    transport._tempDataLen = 4
    assert twistedcompat.take_unsent_buffers(transport) == b"abcd"
    assert transport._tempDataBuffer == [] and transport._tempDataLen == 0


def test_checking_twisted_leaves_trial_out_of_the_daemon() -> None:
    """The sample channel's transport is our own: ``twisted.internet.testing`` imports Trial,
    ``unittest`` and ``doctest``, which would stay in the daemon for its life (about 1 MiB)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import s3balance.app\n"
        "from s3balance.net import twistedcompat\n"
        "assert twistedcompat.check_running_twisted() == ()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('twisted.internet.testing',"
        " 'twisted.trial', 'doctest'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
