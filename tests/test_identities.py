"""Identity normalisation, hashing and the include rule (docs/contract.md §3)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.config import parse_config
from transforms.events.identities import (
    hash_email,
    hash_phone,
    normalise_email,
    normalise_phone,
    output_identities,
)

HASH = {"email": "email_lc_sha256", "phone": "phone_sha256"}


def sha(text: str) -> str:
    """The expected digest, computed independently of the implementation."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config(include=None, hash_=None):
    identities = {}
    if include is not None:
        identities["include"] = include
    if hash_ is not None:
        identities["hash"] = hash_
    return parse_config({"segments": "*", "identities": identities})


# --- e-mail -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("john.doe@example.com", "john.doe@example.com"),
        ("John.Doe@Example.com ", "john.doe@example.com"),
        ("\t  JOHN.DOE@EXAMPLE.COM\n", "john.doe@example.com"),
        # Unicode: lower-casing is Unicode-aware, inner spaces are kept.
        ("  JOSÉ.Müller@Exämple.DE ", "josé.müller@exämple.de"),
        ("ÐÆÞ@ΣΊΣΥΦΟΣ.gr", "ðæþ@σίσυφοσ.gr"),
        ("\u00a0Anna@Example.com\u2003", "anna@example.com"),  # NBSP / em space are trimmed
        ("a b@c.d", "a b@c.d"),
    ],
)
def test_hash_email_trims_lowercases_and_hashes_utf8(raw, normalised):
    assert normalise_email(raw) == normalised
    assert hash_email(raw) == sha(normalised)


def test_hash_email_known_digest():
    # The digest of "john.doe@example.com", spelled out byte by byte.
    expected = hashlib.sha256(bytes([*b"john", 0x2E, *b"doe", 0x40, *b"example.com"])).hexdigest()
    assert hash_email(" John.Doe@EXAMPLE.com") == expected
    assert len(expected) == 64


def test_hash_email_differs_by_unicode_form():
    # No Unicode normalisation beyond lower-casing: composed and decomposed é differ,
    # exactly like every other trim+lower SHA-256 matcher.
    composed, decomposed = "jos\u00e9@x.com", "jose\u0301@x.com"
    assert hash_email(composed) == sha(composed)
    assert hash_email(decomposed) == sha(decomposed)
    assert hash_email(composed) != hash_email(decomposed)


@pytest.mark.parametrize("raw", ["", " ", "\t\n "])
def test_blank_email_hashes_to_nothing(raw):
    assert hash_email(raw) == ""


# --- phone --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("+1 (555) 010-9999", "+15550109999"),
        ("+15550109999", "+15550109999"),
        (" 555.010.9999 ", "5550109999"),
        ("0033 6 12 34 56 78", "0033612345678"),
        ("(+33) 6-12-34-56-78", "+33612345678"),  # + before the first digit leads
        ("06+12 34", "061234"),  # + after a digit is not leading
        ("++44 20", "+4420"),
        ("tel:+44-20-7946-0958 ext. 12", "+44207946095812"),
        ("０６ １２", "0612"),  # full-width digits
        ("٠٦١٢", "0612"),  # Arabic-Indic digits
    ],
)
def test_hash_phone_keeps_digits_and_leading_plus(raw, normalised):
    assert normalise_phone(raw) == normalised
    assert hash_phone(raw) == sha(normalised)


@pytest.mark.parametrize("raw", ["", "+", " + ", "n/a", "²³"])
def test_phone_without_digits_hashes_to_nothing(raw):
    assert normalise_phone(raw) == ""
    assert hash_phone(raw) == ""


# --- output identities --------------------------------------------------------------


RAW = {
    "email": ["John.Doe@Example.com ", "john.doe@example.com", "  "],
    "ecid": ["14575006536349286404619648085736425115"],
    "phone": ["+1 (555) 010-9999", "n/a"],
    "crm": ["", " "],
}


def test_no_hash_no_include_keeps_every_namespace_verbatim():
    assert output_identities(RAW, config()) == {
        "ecid": [{"id": "14575006536349286404619648085736425115"}],
        "email": [{"id": "John.Doe@Example.com "}, {"id": "john.doe@example.com"}],
        "phone": [{"id": "+1 (555) 010-9999"}, {"id": "n/a"}],
    }


def test_hash_replaces_raw_namespace_and_dedupes_after_hashing():
    assert output_identities(RAW, config(hash_=HASH)) == {
        "ecid": [{"id": "14575006536349286404619648085736425115"}],
        "email_lc_sha256": [{"id": sha("john.doe@example.com")}],
        "phone_sha256": [{"id": sha("+15550109999")}],
    }


def test_include_applies_to_output_names_after_hashing():
    cfg = config(include=["email_lc_sha256", "ecid"], hash_=HASH)
    assert output_identities(RAW, cfg) == {
        "ecid": [{"id": "14575006536349286404619648085736425115"}],
        "email_lc_sha256": [{"id": sha("john.doe@example.com")}],
    }


def test_include_without_hash_selects_raw_namespaces():
    assert output_identities(RAW, config(include=["phone"])) == {
        "phone": [{"id": "+1 (555) 010-9999"}, {"id": "n/a"}]
    }


def test_empty_include_emits_no_identities():
    assert output_identities(RAW, config(include=[])) == {}


def test_hash_source_matches_namespace_case_insensitively():
    raw = {"Email": ["A@X.com"], "EMAIL": ["b@x.com"], "email": ["a@x.com"]}
    # Sources in sorted order ("EMAIL" < "Email" < "email"), each in input order.
    assert output_identities(raw, config(hash_={"email": "email_lc_sha256"})) == {
        "email_lc_sha256": [{"id": sha("b@x.com")}, {"id": sha("a@x.com")}]
    }


def test_hashed_values_merge_with_an_existing_namespace_of_the_same_name():
    already = sha("c@x.com")
    raw = {"email_lc_sha256": [already, sha("a@x.com")], "email": ["a@x.com"]}
    assert output_identities(raw, config(hash_={"email": "email_lc_sha256"})) == {
        "email_lc_sha256": [{"id": sha("a@x.com")}, {"id": already}]
    }


def test_duplicates_keep_first_occurrence_order():
    raw = {"ecid": ["b", "a", "b", "c", "a"]}
    assert output_identities(raw, config()) == {"ecid": [{"id": "b"}, {"id": "a"}, {"id": "c"}]}


def test_only_phone_hashed_leaves_email_raw():
    cfg = config(hash_={"phone": "phone_sha256"})
    out = output_identities({"email": ["A@x.com"], "phone": ["+33 6"]}, cfg)
    assert out == {"email": [{"id": "A@x.com"}], "phone_sha256": [{"id": sha("+336")}]}


def test_non_string_id_is_rejected_without_its_value():
    with pytest.raises(TypeError) as err:
        output_identities({"ecid": [12345678]}, config())
    assert "12345678" not in str(err.value)
    assert "ecid" in str(err.value)


def test_empty_input():
    assert output_identities({}, config(hash_=HASH)) == {}


_namespace = st.sampled_from(["email", "Email", "phone", "ecid", "crm", "email_lc_sha256"])
_ids = st.lists(st.text(max_size=12), max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_namespace, _ids, max_size=6), st.randoms(use_true_random=False))
def test_hashing_never_leaks_raw_and_ignores_dict_order(identities, rnd):
    cfg = config(hash_=HASH)
    out = output_identities(identities, cfg)
    assert not {"email", "Email", "phone"} & set(out)
    raw_values = {v for ns, ids in identities.items() if ns.lower() in HASH for v in ids}
    for namespace in ("email_lc_sha256", "phone_sha256"):
        for entry in out.get(namespace, []):
            assert entry.keys() == {"id"}
            if entry["id"] not in identities.get(namespace, []):
                assert entry["id"] not in raw_values
                assert len(entry["id"]) == 64
    for entries in out.values():
        ids = [e["id"] for e in entries]
        assert ids and len(ids) == len(set(ids)) and all(i.strip() for i in ids)
    items = list(identities.items())
    rnd.shuffle(items)
    assert output_identities(dict(items), cfg) == out
