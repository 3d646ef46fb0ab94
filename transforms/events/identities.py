"""The identity part of an event: normalisation, hashing and the include rule (docs/contract.md §3).

Rules, in the order they apply to a profile's raw ``namespace -> [ids]``:

1. **Hashing.** A namespace whose name matches a source of ``identities.hash``
   (case-insensitively: ``Email`` and ``email`` are both e-mails, so that no raw
   address can slip through under another spelling) is replaced by its hashed
   namespace. The raw namespace never reaches the output.

   * e-mail: strip surrounding whitespace, lower-case (Unicode-aware ``str.lower``),
     then the SHA-256 hex digest of the UTF-8 bytes;
   * phone: keep only the digits (any Unicode decimal digit, written as ASCII
     ``0-9``) and a ``+`` if one comes before the first digit (placed first), then
     the SHA-256 hex digest of the ASCII bytes.

   Ids that are empty after normalisation (a blank e-mail, a phone without digits)
   are dropped: a hash of nothing identifies nobody.
2. **Raw namespaces** keep their ids verbatim; empty or blank ids are dropped.
3. **Include.** ``identities.include`` names *output* namespaces (after hashing);
   absent means every namespace.
4. **Duplicates.** Within an output namespace, the first occurrence of an id wins.
   When several sources land in one output namespace (``email`` and ``Email``, or a
   raw namespace that already has the hashed namespace's name), they are taken in
   sorted order of their source names, each in input order, so the result never
   depends on dict order.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Iterable, Mapping

from transforms.config import ActivationConfig


def normalise_email(address: str) -> str:
    """The e-mail form that is hashed: surrounding whitespace stripped, lower-cased."""
    return address.strip().lower()


def normalise_phone(number: str) -> str:
    """The phone form that is hashed: digits only, with a leading ``+`` if the input had one.

    A ``+`` counts as leading when it comes before the first digit, so
    ``"(+33) 6 12"`` keeps it and ``"06+12"`` does not. Unicode decimal digits
    (e.g. full-width ``"０"``) are written as their ASCII digit.
    """
    digits: list[str] = []
    plus = False
    for char in number:
        if char.isdecimal():
            digits.append(str(unicodedata.decimal(char)))
        elif char == "+" and not digits:
            plus = True
    if not digits:
        return ""
    return ("+" if plus else "") + "".join(digits)


def hash_email(address: str) -> str:
    """SHA-256 hex of the normalised e-mail address (see :func:`normalise_email`).

    Args:
        address: The raw address, e.g. ``" John.Doe@Example.com "``.

    Returns:
        64 lower-case hex characters, or ``""`` when the address is blank.
    """
    normalised = normalise_email(address)
    return _sha256_hex(normalised) if normalised else ""


def hash_phone(number: str) -> str:
    """SHA-256 hex of the normalised phone number (see :func:`normalise_phone`).

    Args:
        number: The raw number, e.g. ``"+1 (555) 010-9999"``.

    Returns:
        64 lower-case hex characters, or ``""`` when the number has no digit.
    """
    normalised = normalise_phone(number)
    return _sha256_hex(normalised) if normalised else ""


# Hash functions by source namespace kind; keys are transforms.config.HASHABLE_NAMESPACES.
_HASHERS: dict[str, Callable[[str], str]] = {"email": hash_email, "phone": hash_phone}


def output_identities(
    identities: Mapping[str, Iterable[str]], config: ActivationConfig
) -> dict[str, list[dict[str, str]]]:
    """The ``identityMap`` of an event from a profile's raw identities.

    Args:
        identities: Raw namespace -> ids in input order (the internal profile form).
        config: The activation config (``identities.include`` and ``identities.hash``).

    Returns:
        Output namespace -> list of ``{"id": ...}``, namespaces in sorted order;
        namespaces left without ids are absent. See the module docstring for the rules.

    Raises:
        TypeError: An id is not a string.
    """
    hash_targets = config.hash_map
    include = None if config.identities_include is None else set(config.identities_include)
    collected: dict[str, dict[str, None]] = {}
    for source in sorted(identities):
        kind = source.lower()
        hasher = _HASHERS.get(kind) if kind in hash_targets else None
        output = hash_targets[kind] if hasher is not None else source
        if include is not None and output not in include:
            continue
        ids = collected.setdefault(output, {})
        for raw in identities[source]:
            if not isinstance(raw, str):
                # The type only: identity values are never put in messages or logs.
                raise TypeError(f"identity of namespace {source!r} is {type(raw).__name__}")
            value = hasher(raw) if hasher is not None else raw
            if value.strip():
                ids.setdefault(value, None)
    return {
        namespace: [{"id": value} for value in collected[namespace]]
        for namespace in sorted(collected)
        if collected[namespace]
    }


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
