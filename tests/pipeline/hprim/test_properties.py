"""Any bytes → one or more results or one refusal (an IntakeError), never a crash."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.hl7.errors import IntakeError
from pipeline.hprim.facts import FORMAT_MEDECINS, FORMAT_SANTE
from pipeline.hprim.intake import read_hprim
from pipeline.reading import read_any
from tests.pipeline.hprim.builders import medecins, medecins_report, sante, simple

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(data: bytes, fmt: str | None = None) -> None:
    results = list(read_hprim(data, fmt=fmt))
    assert results
    for result in results:
        assert (result.facts is None) != (result.error is None)
        if result.error is not None:
            assert isinstance(result.error, IntakeError) and str(result.error)
            assert len(results) == 1
        else:
            # A result re-reads to itself: what routing and sealing read again is the same.
            [again] = read_hprim(result.data, fmt=result.format)
            assert again.facts == result.facts


@SETTINGS
@given(st.binary(max_size=600), st.sampled_from([None, FORMAT_SANTE, FORMAT_MEDECINS]))
def test_any_bytes(data: bytes, fmt: str | None) -> None:
    check(data, fmt)


_PIECES = st.sampled_from(
    [
        "H",
        "P",
        "OBR",
        "OBX",
        "C",
        "A",
        "L",
        "|",
        "~",
        "^",
        "\\",
        "&",
        "\r",
        "\n",
        "\r\n",
        "1",
        "2",
        "H2.1",
        "ORU",
        "é",
        "\\S\\",
        "****LAB****",
        "****FIN****",
        "****FINFICHIER****",
        "RES|",
        " ",
        "\xff",
    ]
)


@SETTINGS
@given(st.lists(_PIECES, max_size=80))
def test_record_shaped_noise(pieces: list[str]) -> None:
    check(("H|~^\\&|" + "".join(pieces)).encode("utf-8", "surrogateescape"))
    check("".join(pieces).encode("utf-8"), FORMAT_MEDECINS)


@SETTINGS
@given(st.data())
def test_valid_files_with_one_byte_changed_or_cut(data: st.DataObject) -> None:
    base = data.draw(
        st.sampled_from(
            [sante(*simple()), sante(*simple(), end_with="\r\n"), medecins(medecins_report())]
        )
    )
    position = data.draw(st.integers(0, len(base) - 1))
    byte = data.draw(st.integers(0, 255))
    check(base[:position] + bytes([byte]) + base[position + 1 :])
    check(base[:position])


@SETTINGS
@given(
    st.binary(max_size=400), st.sampled_from([b"", b"MSH|^~\\&|", b"H|~^\\&|", b"****LAB****\r"])
)
def test_any_bytes_through_the_format_dispatch(data: bytes, head: bytes) -> None:
    for result in read_any(head + data):
        assert (result.facts is None) != (result.error is None)
        assert result.error is None or isinstance(result.error, IntakeError)
