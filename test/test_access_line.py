"""The access line's pieces (the whole line, written by a real daemon: ``test_auth_edges``)."""

from __future__ import annotations

from s3balance.logs import ACCESS_LINE, NO_VALUE, access_operation, printable


def test_operation_names_the_parameters_behind_a_refusal_never_their_values() -> None:
    assert access_operation("GetObject") == "GetObject"
    assert access_operation("NotImplemented", ["cors"]) == "NotImplemented[cors]"
    assert access_operation("NotImplemented", ["tagging", "cors", "cors"]) == (
        "NotImplemented[cors,tagging]"
    )


def test_the_line_stays_one_line() -> None:
    assert printable("/vb/caf\u00e9 1+1.txt") == "/vb/caf\u00e9 1+1.txt"
    assert printable("/vb/a\u0085b\u2028c\x1b") == "/vb/a\\x85b\\u2028c\\x1b"
    line = ACCESS_LINE.format(
        method="PUT", path=printable("/vb/k\u0085"), operation="NotImplemented[cors]",
        status=501, error_code="NotImplemented", bytes_in=0, bytes_out=312, duration=0.0012,
        client="127.0.0.1:5", request_id="abc",
    )  # fmt: skip
    assert len(line.splitlines()) == 1
    assert line == (
        "PUT /vb/k\\x85 NotImplemented[cors] 501 NotImplemented in=0 out=312 0.001s "
        "127.0.0.1:5 abc"
    )
    assert NO_VALUE == "-"
