"""Associations the archive opens itself, as association requester: C-ECHO and C-STORE to a registered remote AE
(the REST actions of app/api/aes.py) and the Storage Commitment N-EVENT-REPORT (commitment.py).

Every function here blocks, as pynetdicom's SCU API does: call them from a worker thread (`asyncio.to_thread`),
never on the event loop. A function that needs the archive (to read an instance) takes a plain callable that
the caller built over a LoopBridge, so this module knows nothing about the loop.

Presentation contexts proposed for a C-STORE (PS3.4 B.2, PS3.7 7.1.1.13, PS3.8 9.3.2.2): for each SOP class
to send, one context per stored transfer syntax, alone (so an instance goes unchanged whenever the peer can take
it: an acceptor picks one syntax per context by its own preference, so a stored syntax offered beside others
could lose to one that needs transcoding), and one with Explicit then Implicit VR Little Endian (Implicit is
the default every storage SCP must accept, PS3.5 10.1, and a decodable instance can be transcoded into it). More
than 128 contexts (the limit of PS3.8 9.3.2.2: odd IDs 1-255) are split over several associations.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydicom import Dataset
from pynetdicom import build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import A_ASSOCIATE, SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import code_to_category

from app.config import Settings
from app.core.aes import RemoteAE
from app.core.records import StoredInstance
from app.core.retrieve.streaming import EncodedInstance
from dimse_bridge.access import RESULT_REJECTED_PERMANENT, RESULT_REJECTED_TRANSIENT
from dimse_bridge.reactor import PromptAE
from dimse_bridge.sending import EncodedDataSet, send_encoded
from dimse_bridge.tcp import handle_connection_open

log = logging.getLogger(__name__)

VERIFICATION: Final = "1.2.840.10008.1.1"
EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
MAX_CONTEXTS: Final = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255

# Status of a sub-operation we could not even attempt (no context accepted, unreadable instance, association
# lost): 0xA900 is "Data Set does not match SOP Class" for C-STORE, so use the generic "unable to process".
UNABLE_TO_PROCESS: Final = 0xC000

Loader = Callable[[StoredInstance, list[str]], EncodedInstance]
"""Read one instance's data set encoded in one of the given transfer syntaxes (RetrieveService.encoded)."""


class ScuError(RuntimeError):
    """No association could be made with the remote AE (unreachable, rejected, aborted); says why."""


@dataclass(frozen=True)
class ScuOptions:
    """How we associate: our AE title, timeouts, PDU size and our TLS identity (from Settings)."""

    calling_ae_title: str
    timeout: float = 30.0
    connection_timeout: float | None = None
    max_pdu: int = 262144
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ScuOptions:
        return cls(
            calling_ae_title=settings.ae_title,
            timeout=settings.dimse_scu_timeout,
            connection_timeout=settings.dimse_connection_timeout,
            max_pdu=settings.dimse_max_pdu,
            tls_cert=settings.dimse_tls_cert,
            tls_key=settings.dimse_tls_key,
            tls_ca=settings.dimse_tls_ca,
        )


def client_tls(options: ScuOptions, remote: RemoteAE) -> tuple[ssl.SSLContext, str] | None:
    """The TLS context for a remote AE registered with `tls` (PS3.15 B.1): the peer is verified against
    DIMSE_TLS_CA (the system store when unset) and our certificate is presented when we have one."""
    if not remote.tls:
        return None
    cafile = str(options.tls_ca) if options.tls_ca else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if options.tls_cert is not None and options.tls_key is not None:
        context.load_cert_chain(str(options.tls_cert), str(options.tls_key))
    return context, remote.host


@dataclass
class _Attempt:
    """What the association attempt saw, to say why it failed."""

    connected: bool = False
    answer: A_ASSOCIATE | None = None


def associate(
    remote: RemoteAE,
    options: ScuOptions,
    contexts: Sequence[PresentationContext],
    *,
    roles: Sequence[SCP_SCU_RoleSelectionNegotiation] = (),
    handlers: Iterable[evt.EventHandlerType] = (),
) -> Association:
    """An established association with `remote` proposing `contexts`, or ScuError saying why not."""
    ae = PromptAE(ae_title=options.calling_ae_title)
    ae.acse_timeout = options.timeout
    ae.dimse_timeout = options.timeout
    ae.network_timeout = options.timeout
    ae.connection_timeout = options.connection_timeout or options.timeout
    attempt = _Attempt()

    def connected(event: Event) -> None:
        attempt.connected = True
        handle_connection_open(event)

    def answer_received(event: Event) -> None:
        # The answer is taken from the PDU as the DUL receives it, not from pynetdicom's verdict: pynetdicom 3.0's
        # requestor looks at its socket only after it sent the request, and when the A-ASSOCIATE-RJ and the close
        # of the connection (PS3.8 9.2, AE-4) have both come by then, it takes the closed socket for a connection
        # that failed and reports an abort, with the answer left unread (acse._negotiate_as_requestor). A peer
        # rejecting at once, as ours does, hits this a few times in a hundred.
        pdu = getattr(event, "pdu", None)  # EVT_PDU_RECV's own attribute, set by pynetdicom
        if isinstance(pdu, A_ASSOCIATE_AC | A_ASSOCIATE_RJ):
            attempt.answer = pdu.to_primitive()

    assoc = ae.associate(
        remote.host,
        remote.port,
        contexts=list(contexts),
        ae_title=remote.ae_title,
        max_pdu=options.max_pdu,
        ext_neg=list(roles) or None,
        tls_args=client_tls(options, remote),
        evt_handlers=[(evt.EVT_CONN_OPEN, connected), (evt.EVT_PDU_RECV, answer_received), *handlers],
    )
    # A listener to EVT_PDU_RECV would have every P-DATA-TF PDU decoded into pynetdicom's objects (reactor.py).
    assoc.unbind(evt.EVT_PDU_RECV, answer_received)
    if assoc.is_established:
        return assoc
    where = f"{remote.ae_title} at {remote.host}:{remote.port}"
    answer = attempt.answer
    if answer is not None and answer.result in (RESULT_REJECTED_PERMANENT, RESULT_REJECTED_TRANSIENT):
        raise ScuError(
            f"association rejected by {where}: {answer.result_str}, {answer.source_str}, {answer.reason_str}"
        )
    if not attempt.connected:
        raise ScuError(f"cannot connect to {where}")
    if answer is None:
        raise ScuError(f"no answer to the association request from {where} (timeout or abort)")
    if answer.result == 0x00:  # accepted, then aborted by pynetdicom because no context was accepted
        proposed = ", ".join(sorted({str(cx.abstract_syntax) for cx in contexts}))
        raise ScuError(f"{where} accepted none of the presentation contexts proposed ({proposed})")
    raise ScuError(f"association with {where} aborted")


# -- C-ECHO ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EchoResult:
    status: int
    seconds: float


def echo(remote: RemoteAE, options: ScuOptions) -> EchoResult:
    """C-ECHO (PS3.4 A.4) on a new association; ScuError when none can be made or the peer does not answer."""
    started = time.monotonic()
    assoc = associate(remote, options, [build_context(VERIFICATION)])
    try:
        if not any(cx.abstract_syntax == VERIFICATION for cx in assoc.accepted_contexts):
            raise ScuError(f"{remote.ae_title} does not accept the Verification SOP Class")
        status = assoc.send_c_echo()
        if "Status" not in status:
            raise ScuError(f"no C-ECHO response from {remote.ae_title} (timeout or abort)")
        return EchoResult(int(status.Status), time.monotonic() - started)
    finally:
        _release(assoc)


# -- C-STORE --------------------------------------------------------------------------------------------------


@dataclass
class StoreReport:
    """The outcome of a set of C-STORE sub-operations, counted as a C-MOVE counts them (PS3.4 C.4.2.1.5)."""

    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_sop_instance_uids: list[str] = field(default_factory=list)
    # Told after each sub-operation is counted (from the sending thread), for callers that show progress.
    listener: Callable[[StoreReport], None] | None = field(default=None, repr=False, compare=False)

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.warning

    def fail(self, ref: StoredInstance) -> None:
        self.failed += 1
        self.failed_sop_instance_uids.append(ref.sop_instance_uid)

    def count(self, ref: StoredInstance, code: int | None) -> bool:
        """Count the sub-operation of `ref` by the category of its C-STORE-RSP status (None: it had none, a
        failure); True if it succeeded, with or without a warning."""
        category = code_to_category(code) if code is not None else "Failure"
        if category == "Success":
            self.completed += 1
        elif category == "Warning":
            self.warning += 1
        else:
            self.fail(ref)  # PS3.4 C.4.2.3.1, C.4.3.3.1: listed in Failed SOP Instance UID List
            return False
        return True

    def changed(self) -> None:
        if self.listener is not None:
            self.listener(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "completed": self.completed,
            "failed": self.failed,
            "warning": self.warning,
            "failedSOPInstanceUIDs": self.failed_sop_instance_uids,
        }


def storage_contexts(refs: Sequence[StoredInstance]) -> list[list[PresentationContext]]:
    """The presentation contexts to propose for `refs`, split into groups of at most MAX_CONTEXTS (one
    association each), a SOP class never split over two groups."""
    syntaxes: dict[str, list[str]] = {}
    for ref in refs:
        stored = syntaxes.setdefault(ref.sop_class_uid, [])
        if ref.transfer_syntax_uid not in stored:
            stored.append(ref.transfer_syntax_uid)
    groups: list[list[PresentationContext]] = [[]]
    for sop_class, stored in syntaxes.items():
        contexts = [build_context(sop_class, syntax) for syntax in stored[: MAX_CONTEXTS - 1]]
        contexts.append(build_context(sop_class, [EXPLICIT_VR_LE, IMPLICIT_VR_LE]))
        if len(groups[-1]) + len(contexts) > MAX_CONTEXTS:
            groups.append([])
        groups[-1].extend(contexts)
    return [group for group in groups if group]


def store(
    remote: RemoteAE,
    refs: Sequence[StoredInstance],
    load: Loader,
    options: ScuOptions,
    progress: Callable[[StoreReport], None] | None = None,
) -> StoreReport:
    """C-STORE every instance of `refs` to `remote` (PS3.4 B.2), each in a transfer syntax accepted for its SOP
    class. ScuError only when no association at all could be made; after that, what could not be sent is
    counted as failed and the rest is still tried. `progress` is called with the report after each
    sub-operation."""
    report = StoreReport(listener=progress)
    groups = storage_contexts(refs)
    for number, contexts in enumerate(groups):
        classes = {str(cx.abstract_syntax) for cx in contexts}
        batch = [ref for ref in refs if ref.sop_class_uid in classes]
        try:
            assoc = associate(remote, options, contexts)
        except ScuError:
            if number == 0 and report.completed + report.warning + report.failed == 0:
                raise
            log.warning("C-STORE to %s: association %d failed", remote.ae_title, number + 1, exc_info=True)
            for ref in batch:
                report.fail(ref)
            report.changed()
            continue
        try:
            _store_batch(assoc, remote, batch, load, report)
        finally:
            _release(assoc)
    return report


def _store_batch(
    assoc: Association, remote: RemoteAE, refs: Sequence[StoredInstance], load: Loader, report: StoreReport
) -> None:
    accepted: dict[str, list[str]] = {}
    for cx in assoc.accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), []).append(str(cx.transfer_syntax[0]))
    for index, ref in enumerate(refs):
        if not assoc.is_established:
            log.warning("C-STORE to %s: association lost, %d not sent", remote.ae_title, len(refs) - index)
            for rest in refs[index:]:
                report.fail(rest)
            report.changed()
            return
        _store_one(assoc, remote, ref, accepted.get(ref.sop_class_uid), load, report)
        report.changed()


def _store_one(
    assoc: Association,
    remote: RemoteAE,
    ref: StoredInstance,
    syntaxes: list[str] | None,
    load: Loader,
    report: StoreReport,
) -> None:
    if not syntaxes:
        log.info("C-STORE to %s: SOP class %s not accepted", remote.ae_title, ref.sop_class_uid)
        report.fail(ref)
        return
    try:
        dataset = load(ref, syntaxes)
    except Exception as exc:  # not acceptable, unreadable, deleted meanwhile, archive unreachable
        log.warning("C-STORE to %s: cannot read %s: %s", remote.ae_title, ref.sop_instance_uid, exc)
        report.fail(ref)
        return
    try:
        status = send_encoded(assoc, EncodedDataSet(dataset))
    except (ValueError, AttributeError, RuntimeError) as exc:  # no matching context
        log.warning("C-STORE to %s: cannot send %s: %s", remote.ae_title, ref.sop_instance_uid, exc)
        report.fail(ref)
        return
    code = int(status.Status) if "Status" in status else UNABLE_TO_PROCESS
    if not report.count(ref, code):
        log.info("C-STORE to %s: %s answered 0x%04X", remote.ae_title, ref.sop_instance_uid, code)


def _release(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()


# -- N-EVENT-REPORT (Storage Commitment results) ------------------------------------------------------------


def send_event_report(
    remote: RemoteAE,
    options: ScuOptions,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    event_type: int,
    information: Dataset,
) -> int:
    """N-EVENT-REPORT on a new association, where we propose the SCP role for `sop_class_uid` (SCP/SCU Role
    Selection, PS3.7 D.3.3.4; PS3.4 J.3.3: the commitment SCP that opens the association to report is its
    requester but stays the SCP of the SOP class). Returns the peer's status; ScuError when no association can
    be made or the peer does not answer."""
    context = build_context(sop_class_uid, [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
    assoc = associate(remote, options, [context], roles=[build_role(sop_class_uid, scp_role=True)])
    try:
        status, _reply = assoc.send_n_event_report(information, event_type, sop_class_uid, sop_instance_uid)
        if "Status" not in status:
            raise ScuError(f"no N-EVENT-REPORT response from {remote.ae_title} (timeout or abort)")
        return int(status.Status)
    finally:
        _release(assoc)
