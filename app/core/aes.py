"""The registry of remote Application Entities: who we may send to (C-MOVE destinations, C-STORE and C-ECHO
SCU actions from the REST API) and who we send Storage Commitment reports to.

A DICOM peer is known by its AE title alone in the protocol (a C-MOVE-RQ names its Move Destination by title,
PS3.4 C.4.2.1.4.1; a Storage Commitment requester is known by its Calling AE Title), so the address to open an
association to must come from configuration: this registry, kept in the metadata repository so that every
process of the archive sees the same entries and the REST API can change them at run time. Entries listed in
DIMSE_REMOTE_AES (`AET@host:port[+tls]`, comma separated) are upserted at start-up.

AE title rules (PS3.5 Table 6.2-1, VR AE): at most 16 characters of the default repertoire, no backslash and no
control characters, leading and trailing spaces not significant (so they are stripped here), and not all spaces.
Titles are case-sensitive: `STORESCP` and `storescp` are two AEs.
"""

from __future__ import annotations

from typing import Final, NamedTuple, Protocol

AE_TITLE_MAX: Final = 16


class InvalidAE(ValueError):
    """An AE title, host or port that cannot be used (the REST door answers 400, start-up fails)."""


class RemoteAE(NamedTuple):
    ae_title: str
    host: str
    port: int
    tls: bool = False


def normalise_ae_title(title: str) -> str:
    """`title` without its non-significant leading/trailing spaces; InvalidAE unless it is a valid AE title."""
    stripped = title.strip(" ")
    if not stripped:
        raise InvalidAE("an AE title cannot be empty or all spaces")
    if len(stripped) > AE_TITLE_MAX:
        raise InvalidAE(f"AE title {stripped!r} is longer than {AE_TITLE_MAX} characters")
    if "\\" in stripped:
        raise InvalidAE(f"AE title {stripped!r} contains a backslash")
    # Default character repertoire (PS3.5 6.1.2): ISO 646 G0 set, i.e. printable ASCII; no control characters.
    if any(not (0x20 <= ord(char) < 0x7F) for char in stripped):
        raise InvalidAE(f"AE title {stripped!r} contains a control or non-ASCII character")
    return stripped


def validate(ae: RemoteAE) -> RemoteAE:
    """`ae` with a normalised title and host, or InvalidAE saying what is wrong."""
    title = normalise_ae_title(ae.ae_title)
    host = ae.host.strip()
    if not host or any(char.isspace() or not char.isprintable() for char in host) or "/" in host:
        raise InvalidAE(f"not a host name or address: {ae.host!r}")
    if isinstance(ae.port, bool) or not isinstance(ae.port, int) or not 1 <= ae.port <= 65535:
        raise InvalidAE(f"not a TCP port: {ae.port!r}")
    return RemoteAE(title, host, ae.port, bool(ae.tls))


def parse_remote_ae(entry: str) -> RemoteAE:
    """One DIMSE_REMOTE_AES entry: `AET@host:port`, optionally followed by `+tls`. IPv6 hosts go in brackets
    (`PACS@[::1]:104`)."""
    text = entry.strip()
    tls = False
    if text.lower().endswith("+tls"):
        text, tls = text[: -len("+tls")], True
    title, at, address = text.rpartition("@")
    if not at:
        raise InvalidAE(f"expected AET@host:port[+tls], got {entry!r}")
    host, colon, port_text = address.rpartition(":")
    if not colon or not port_text.isdigit():
        raise InvalidAE(f"expected AET@host:port[+tls], got {entry!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return validate(RemoteAE(title, host, int(port_text), tls))


def parse_remote_aes(entries: list[str]) -> list[RemoteAE]:
    """Every entry parsed; a title given twice is an error (which address would be meant?)."""
    parsed = [parse_remote_ae(entry) for entry in entries]
    titles = [ae.ae_title for ae in parsed]
    duplicates = sorted({title for title in titles if titles.count(title) > 1})
    if duplicates:
        raise InvalidAE(f"AE title listed more than once: {', '.join(duplicates)}")
    return parsed


class AEStore(Protocol):
    """Where the registry keeps its entries (the port the repositories implement): titles arrive validated and
    normalised."""

    async def get_ae(self, ae_title: str) -> RemoteAE | None: ...

    async def list_aes(self) -> list[RemoteAE]:
        """Every registered AE, in AE title order."""

    async def put_ae(self, ae: RemoteAE) -> bool:
        """Create or replace the entry of `ae.ae_title`; True if it was created."""

    async def delete_ae(self, ae_title: str) -> bool:
        """Remove the entry; True if there was one."""


class AERegistry:
    """Remote AEs by title, persisted in the repository (table/collection `remote_aes`)."""

    def __init__(self, repository: AEStore) -> None:
        self._repository = repository

    async def get(self, ae_title: str) -> RemoteAE | None:
        try:
            title = normalise_ae_title(ae_title)
        except InvalidAE:
            return None  # an invalid title cannot have been registered
        return await self._repository.get_ae(title)

    async def all(self) -> list[RemoteAE]:
        """Every entry, in AE title order."""
        return await self._repository.list_aes()

    async def put(self, ae: RemoteAE) -> bool:
        """Create or replace the entry of `ae.ae_title`; True if it was created. InvalidAE if `ae` is invalid."""
        return await self._repository.put_ae(validate(ae))

    async def delete(self, ae_title: str) -> bool:
        """Remove the entry; True if there was one."""
        try:
            title = normalise_ae_title(ae_title)
        except InvalidAE:
            return False
        return await self._repository.delete_ae(title)

    async def load(self, entries: list[RemoteAE]) -> None:
        """Upsert the configured entries (start-up); entries added through the API are left alone."""
        for ae in entries:
            await self.put(ae)
