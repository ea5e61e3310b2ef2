"""Plausible restaurant data drawn from a caller's seeded ``random.Random`` (never the global one), so that
the same seed yields the same names, addresses, dishes, prices and texts.
"""

from __future__ import annotations

import random
import unicodedata
from decimal import Decimal
from typing import Any, TypedDict

FIRST_NAMES = (
    "Ana", "Bruno", "Chloé", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Inès", "Jonas", "Kemal", "Lucía",
    "Marek", "Nadia", "Olu", "Priya", "Quentin", "Rosa", "Sven", "Tamar", "Ugo", "Vera", "Wei", "Yusuf", "Zoë",
)
LAST_NAMES = (
    "Silva", "Müller", "Dubois", "Ivanova", "Rossi", "Haddad", "Nowak", "Tanaka", "García", "Okafor",
    "Jensen", "Kowalski", "Moreau", "Yılmaz", "Costa", "O'Brien", "Schmidt", "Nakamura", "Petrov", "Lindqvist",
)
EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example")

# (country, cities, street names, postal code pattern: '9' a digit, 'A' a capital letter, None: no code)
LOCALES: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str | None], ...] = (
    ("FR", ("Paris", "Lyon", "Lille", "Nantes"), ("rue de la Paix", "avenue Jean Jaurès", "rue Oberkampf"), "99999"),
    ("DE", ("Berlin", "Köln", "Leipzig"), ("Hauptstraße", "Bergmannstraße", "Schillerallee"), "99999"),
    ("PT", ("Lisboa", "Porto"), ("Rua Augusta", "Avenida da Liberdade", "Rua das Flores"), "9999-999"),
    ("GB", ("London", "Leeds", "Bristol"), ("High Street", "Station Road", "Mill Lane"), "A9 9AA"),
    ("IE", ("Dublin", "Galway"), ("Grafton Street", "Shop Street"), None),
)
ADDRESS_LABELS = ("home", "work", "parents", "gym", None)

CATEGORIES = ("starters", "mains", "pizza", "pasta", "salads", "desserts", "drinks", None)
DISH_ADJECTIVES = ("Smoked", "Grilled", "Crispy", "Slow-cooked", "Spicy", "Wild", "Roasted", "Braised", "Fresh")
DISH_BASES = (
    "chicken", "aubergine", "salmon", "lamb shoulder", "gnocchi", "halloumi", "risotto", "tofu", "duck",
    "cauliflower", "pork belly", "tagliatelle", "mushroom", "sea bass", "falafel",
)
DISH_SIDES = ("with chimichurri", "and fennel", "with miso glaze", "al limone", "with harissa", "", "", "")
TAGS = ("vegan", "vegetarian", "gluten-free", "spicy", "contains-nuts", "chef-special", "seasonal", "halal")

PREFERENCE_DIETS = ("vegan", "vegetarian", "pescatarian", "halal", "kosher")

ORDER_NOTES = (
    "Ring twice, the bell is broken.", "No cutlery please.", "Leave at the door.", "Extra napkins.",
    "Allergic to peanuts!", "Call when outside.",
)

_WORDS = (
    "our", "kitchen", "sources", "every", "ingredient", "from", "small", "farms", "within", "a", "day's", "drive",
    "slowly", "reduced", "stock", "seasoned", "with", "sea", "salt", "and", "hand-picked", "herbs", "served",
    "warm", "over", "a", "bed", "of", "charred", "greens", "finished", "citrus", "zest", "toasted", "seeds",
    "the", "recipe", "comes", "grandmother's", "notebook", "allergens", "may", "include", "traces", "milk",
    "eggs", "gluten", "nuts", "celery", "mustard", "sesame", "portion", "sharing", "pairs", "well", "house",
)


def full_name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def email(rng: random.Random, name: str, serial: int, namespace: str) -> str:
    """Unique within a run through ``serial``, across runs on one database through ``namespace``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    local = ascii_name.lower().replace(" ", ".").replace("'", "")
    tag = f"+{namespace}" if namespace else ""
    return f"{local}.{serial}{tag}@{rng.choice(EMAIL_DOMAINS)}"


def phone(rng: random.Random) -> str | None:
    if rng.random() < 0.3:
        return None  # the legacy signup form made it optional
    return "+" + str(rng.choice((33, 49, 351, 44, 353))) + " " + "".join(str(rng.randrange(10)) for _ in range(9))


def preferences(rng: random.Random) -> dict[str, Any] | None:
    roll = rng.random()
    if roll < 0.4:
        return None
    prefs: dict[str, Any] = {"newsletter": rng.random() < 0.5}
    if roll > 0.7:
        prefs["diet"] = sorted(rng.sample(PREFERENCE_DIETS, rng.randint(1, 2)))
    if roll > 0.9:
        prefs["spice_level"] = rng.randint(0, 3)
    return prefs


def _pattern(rng: random.Random, pattern: str) -> str:
    out = []
    for ch in pattern:
        if ch == "9":
            out.append(str(rng.randrange(10)))
        elif ch == "A":
            out.append(chr(ord("A") + rng.randrange(26)))
        else:
            out.append(ch)
    return "".join(out)


class AddressFields(TypedDict):
    label: str | None
    street: str
    city: str
    postal_code: str | None  # None where the country has no postal codes
    country: str  # ISO 3166-1 alpha-2


def address_fields(rng: random.Random) -> AddressFields:
    country, cities, streets, postal = rng.choice(LOCALES)
    return {
        "label": rng.choice(ADDRESS_LABELS),
        "street": f"{rng.randint(1, 240)} {rng.choice(streets)}",
        "city": rng.choice(cities),
        "postal_code": _pattern(rng, postal) if postal else None,
        "country": country,
    }


def dish_name(rng: random.Random) -> str:
    side = rng.choice(DISH_SIDES)
    return f"{rng.choice(DISH_ADJECTIVES)} {rng.choice(DISH_BASES)}{' ' + side if side else ''}"


def category(rng: random.Random) -> str | None:
    return rng.choice(CATEGORIES)


def tags(rng: random.Random) -> tuple[str, ...] | None:
    if rng.random() < 0.25:
        return None
    return tuple(sorted(rng.sample(TAGS, rng.randint(0, 3))))  # may be empty: '{}' is not NULL


def _sentences(rng: random.Random, min_chars: int) -> str:
    parts: list[str] = []
    size = 0
    while size < min_chars:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 18))]
        sentence = " ".join(words).capitalize() + "."
        parts.append(sentence)
        size += len(sentence) + 1
    return " ".join(parts)


def description(rng: random.Random) -> str | None:
    """Mostly a line or two; about a third are 3-6 KB essays, long enough to be stored in TOAST."""
    roll = rng.random()
    if roll < 0.1:
        return None
    if roll < 0.42:
        return _sentences(rng, rng.randint(3 * 1024, 6 * 1024 - 200))
    return _sentences(rng, rng.randint(40, 300))


def price(rng: random.Random) -> Decimal:
    """Menu prices end in .00, .50 or .90, as restaurants like them; always an exact Decimal."""
    cents = rng.randint(3, 34) * 100 + rng.choice((0, 50, 90))
    return Decimal(cents).scaleb(-2)


def new_price(rng: random.Random, old: Decimal) -> Decimal:
    """A plausible reprice (-15% .. +25%), never equal to the old price and never below 1.00."""
    while True:
        euros = int(old * Decimal(rng.randint(85, 125)) / 100)
        cents = max(1, euros) * 100 + rng.choice((0, 50, 90))
        candidate = Decimal(cents).scaleb(-2)
        if candidate != old:
            return candidate


def quantity(rng: random.Random) -> int:
    return rng.choices((1, 2, 3, 4, 6), weights=(60, 25, 8, 5, 2))[0]


def order_notes(rng: random.Random) -> str | None:
    return rng.choice(ORDER_NOTES) if rng.random() < 0.2 else None
