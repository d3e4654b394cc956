"""Personal data in a request: e-mail addresses, phone numbers, payment card numbers (Luhn-checked), IBANs
(mod-97-checked), and patterns a suite declares. A request that holds any goes only to local or on-prem tiers:
a routing constraint that `bench.router` and `bench serve` enforce per request, not a preference."""

from __future__ import annotations

import re
from collections.abc import Iterable

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# +44 20 7946 0958 (international), (415) 555-0123 or 415-555-0123 (North American), 0151 496 0000 (national,
# leading 0); a date such as 2026-04-09 is none of these
PHONE = re.compile(r"(?<![\w+])(?:\+\d[\d ().-]{6,}\d|\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}|0\d{2,4}[ -]\d{3,4}[ -]\d{3,4})(?!\w)")
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")


def luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def personal_data(text: str, patterns: Iterable[str] = ()) -> list[str]:
    """The kinds of personal data found in `text` (empty when none): email, phone, card, iban, or pattern:<i>."""
    found = []
    if EMAIL.search(text):
        found.append("email")
    cards = [m.group(0) for m in CARD.finditer(text)]
    if any(13 <= len(d := re.sub(r"\D", "", c)) <= 19 and luhn_ok(d) for c in cards):
        found.append("card")
    if any(iban_ok(m.group(0)) for m in IBAN.finditer(text)):
        found.append("iban")
    if any(7 <= len(re.sub(r"\D", "", m.group(0))) <= 15 for m in PHONE.finditer(text)):
        found.append("phone")
    for i, pattern in enumerate(patterns):
        if re.search(pattern, text):
            found.append(f"pattern:{i}")
    return found
