"""The answer of ``GET /v1/search``, declared once: the route encodes it, ``/openapi.json``
derives its schema from it."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["ProviderStatus", "SearchAnswer", "SearchItem"]

Millis = Annotated[int, msgspec.Meta(ge=0)]


class SearchItem(msgspec.Struct, forbid_unknown_fields=True):
    """One result, as its provider gave it, and the provider's name."""

    id: str
    title: str
    url: str
    score: float
    provider: str


class ProviderStatus(msgspec.Struct, forbid_unknown_fields=True):
    """How one provider answered: ``ok`` with ``count`` items, or ``timeout`` or ``error``
    (``error`` says why; ``elapsed_ms`` is null then, or the deadline when the provider
    had not answered by it)."""

    name: str
    status: Literal["ok", "timeout", "error"]
    elapsed_ms: Millis | None
    count: Annotated[int, msgspec.Meta(ge=0)] | msgspec.UnsetType = msgspec.UNSET
    error: str | msgspec.UnsetType = msgspec.UNSET


class SearchAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """The providers' items merged in one order (score, then the providers' order, then
    each provider's own), and how each provider answered."""

    query: str
    items: list[SearchItem]
    providers: list[ProviderStatus]
    elapsed_ms: Millis
