"""Associations the archive opens itself on the event loop, as association requester: a C-MOVE's sub-association
to its Move Destination (loop_retrieve.py), for a C-MOVE received on an association the loop serves.

pynetdicom's requester (scu.py) runs two threads per association, each C-STORE response crossing from one to the
other; on the loop the sub-association is a connection and a Link (link.py), as the requesting association is.
pynetdicom's own PDU classes encode the A-ASSOCIATE-RQ and decode the answer (PS3.8 9.3.2-9.3.4); the contexts
proposed are scu.storage_contexts', and the errors say why as scu.associate's do (ScuError).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from app.core.aes import RemoteAE
from dimse_bridge.acceptor import MIN_PDU_LIMIT
from dimse_bridge.link import (
    A_ABORT_TYPE,
    A_ASSOCIATE_AC_TYPE,
    A_ASSOCIATE_RJ_TYPE,
    A_RELEASE_RP_TYPE,
    A_RELEASE_RQ,
    ABORT_SOURCE_USER,
    PDU_HEADER,
    Ended,
    Link,
)
from dimse_bridge.scu import ScuError, ScuOptions, client_tls

log = logging.getLogger(__name__)

ACCEPTANCE: Final = 0x00  # PS3.8 9.3.3.2 Result/Reason of a presentation context: acceptance


@dataclass(frozen=True)
class Implementation:
    """How the archive names itself in an A-ASSOCIATE-RQ (PS3.7 D.3.3.2, D.3.3.3)."""

    calling_ae_title: str
    class_uid: str
    version_name: str


@dataclass
class Requested:
    """An established association we requested: its link, and where each SOP class may be sent, in which
    transfer syntax, on which presentation context (SOP class -> {transfer syntax: context ID})."""

    link: Link
    sending: dict[str, dict[str, int]]
    where: str


async def associate(
    remote: RemoteAE,
    options: ScuOptions,
    contexts: Sequence[PresentationContext],
    us: Implementation,
    *,
    acse_timeout: float | None = None,
) -> Requested:
    """An established association with `remote` proposing `contexts` (their IDs set here: 1, 3, 5...), or
    ScuError saying why not. The answer is waited for `acse_timeout`, or else `options.timeout`."""
    where = f"{remote.ae_title} at {remote.host}:{remote.port}"
    tls = client_tls(options, remote)
    try:
        async with asyncio.timeout(options.connection_timeout or options.timeout):
            if tls is None:
                reader, writer = await asyncio.open_connection(remote.host, remote.port)
            else:
                reader, writer = await asyncio.open_connection(
                    remote.host, remote.port, ssl=tls[0], server_hostname=tls[1]
                )
    except (OSError, TimeoutError) as exc:
        raise ScuError(f"cannot connect to {where}: {exc or 'timed out'}") from exc
    link = Link(
        reader,
        writer,
        events=None,
        connection=f"connection to {where}",
        association=f"association with {where}",
        limit=max(options.max_pdu, MIN_PDU_LIMIT) if options.max_pdu else 0,
        max_pdu=0,  # until the A-ASSOCIATE-AC says
        network_timeout=options.timeout,
    )
    try:
        return await _negotiate(link, remote, options, contexts, us, where, acse_timeout or options.timeout)
    except ScuError:
        link.close()
        raise
    except Exception as exc:  # the connection failed, or an answer pynetdicom cannot decode
        link.close()
        raise ScuError(f"association with {where} failed: {exc!r}") from exc
    except BaseException:
        link.close()
        raise


async def _negotiate(
    link: Link,
    remote: RemoteAE,
    options: ScuOptions,
    contexts: Sequence[PresentationContext],
    us: Implementation,
    where: str,
    acse_timeout: float | None,
) -> Requested:
    proposed: dict[int, str] = {}
    for number, context in enumerate(contexts):
        context.context_id = 2 * number + 1  # PS3.8 9.3.2.2: odd integers 1-255
        proposed[context.context_id] = str(context.abstract_syntax)
    await link.write((_request(remote, options, contexts, us),))
    try:
        kind, body = await link.pdu(acse_timeout)
    except (TimeoutError, Ended) as exc:
        raise ScuError(f"no answer to the association request from {where} (timeout or abort)") from exc
    pdu = PDU_HEADER.pack(kind, len(body)) + body
    if kind == A_ASSOCIATE_RJ_TYPE:
        rejection = A_ASSOCIATE_RJ()
        rejection.decode(pdu)
        answer = rejection.to_primitive()
        raise ScuError(
            f"association rejected by {where}: {answer.result_str}, {answer.source_str}, {answer.reason_str}"
        )
    if kind != A_ASSOCIATE_AC_TYPE:
        if kind != A_ABORT_TYPE:
            await link.end(ABORT_SOURCE_USER)
        raise ScuError(f"association with {where} aborted")
    acceptance = A_ASSOCIATE_AC()
    acceptance.decode(pdu)
    accepted = acceptance.to_primitive()
    sending: dict[str, dict[str, int]] = {}
    for result in accepted.presentation_context_definition_results_list:
        context_id = int(result.context_id or 0)
        if result.result == ACCEPTANCE and context_id in proposed and result.transfer_syntax:
            syntaxes = sending.setdefault(proposed[context_id], {})
            syntaxes.setdefault(str(result.transfer_syntax[0]), context_id)
    if not sending:
        await link.end(ABORT_SOURCE_USER)
        names = ", ".join(sorted(set(proposed.values())))
        raise ScuError(f"{where} accepted none of the presentation contexts proposed ({names})")
    for item in accepted.user_information:
        if isinstance(item, MaximumLengthNotification):
            link.max_pdu = int(item.maximum_length_received or 0)
    return Requested(link, sending, where)


def _request(
    remote: RemoteAE, options: ScuOptions, contexts: Sequence[PresentationContext], us: Implementation
) -> bytes:
    """The A-ASSOCIATE-RQ PDU (PS3.8 9.3.2), as pynetdicom's requester writes it."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = us.calling_ae_title
    primitive.called_ae_title = remote.ae_title
    primitive.presentation_context_definition_list = list(contexts)
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = options.max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = us.class_uid
    primitive.user_information = [maximum, implementation]
    if us.version_name:
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = us.version_name
        primitive.user_information.append(version)
    return A_ASSOCIATE_RQ(primitive).encode()


async def release(requested: Requested, seconds: float | None) -> None:
    """A-RELEASE-RQ, then the A-RELEASE-RP within `seconds` (PS3.8 9.2, AR-1, AR-3); whatever else comes
    meanwhile is dropped. The connection is closed either way."""
    link = requested.link
    if link.writer.is_closing():
        return  # aborted already
    try:
        await link.write((A_RELEASE_RQ,))
        async with asyncio.timeout(seconds):
            while (await link.pdu(seconds))[0] != A_RELEASE_RP_TYPE:
                pass
    except (TimeoutError, Ended, OSError):
        log.info("association with %s: no A-RELEASE-RP, connection closed", requested.where)
    finally:
        link.close()


async def abort(link: Link) -> None:
    """A-ABORT (PS3.8 9.3.8) on an association we requested, and the connection closed."""
    if not link.writer.is_closing():
        with contextlib.suppress(OSError):
            await link.end(ABORT_SOURCE_USER)
    link.close()
