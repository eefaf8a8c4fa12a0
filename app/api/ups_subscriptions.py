"""UPS-RS subscriptions (PS3.18 11.10-11.12): who hears of which workitems' changes, over the event channel.

A subscriber AE subscribes to one workitem, to the whole worklist (the well-known UID 1.2.840.10008.5.1.4.34.5,
PS3.4 CC.2.3.2) or to the workitems that match a filter (1.2.840.10008.5.1.4.34.5.1); the events then reach it
on its WebSocket, `ws[s]://{host}/dicom-web/subscribers/{aetitle}` (app/api/ups_events.py), whose URL Subscribe
answers in Content-Location (PS3.18 Table 11.10.3-2). What a subscription means - the state reported at once,
new workitems added to global subscribers - is the core's (app/core/workflow/ups.py).

The filter is `filter=attribute=value[,attribute=value]` (PS3.18 11.10.1.2), or the same keys as query parameters
of their own as dcm4chee-arc takes them, matched as QIDO-RS keys are (PS3.18 8.3.4.1). Given for any other
target it is refused (400), as is a Filtered Worklist subscription without one.
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.api.errors import DicomWebError
from app.api.ups import WORKITEM_UID, responses
from app.api.urls import service_root
from app.api.workflow_errors import Transaction, workflow_errors
from app.api.workflow_input import boolean, checked_ae_title, checked_uid, filter_keys
from app.config import Settings
from app.core.workflow.records import FILTERED_GLOBAL_SUBSCRIPTION, GLOBAL_SUBSCRIPTION
from app.deps import Context

router = APIRouter(tags=["UPS-RS"])

_SUBSCRIBE_PARAMETERS: Final = frozenset({"deletionlock"})
_BAD = "A path UID or AE title (at most 16 characters, PS3.5 Table 6.2-1) or a query parameter is not valid."


def event_channel_url(request: Request, settings: Settings, ae_title: str) -> str:
    """The subscriber's WebSocket URL (PS3.18 8.10.4): the DICOMweb root with ws/wss for http/https."""
    root = service_root(request, settings)
    scheme, _, rest = root.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/subscribers/{ae_title}"


@router.post(
    "/workitems/{workitem}/subscribers/{aetitle}",
    status_code=201,
    summary="Subscribe (UPS-RS, PS3.18 11.10)",
    description="Subscribes the AE to a workitem's events, to every workitem's (the Worklist, "
    f"{GLOBAL_SUBSCRIPTION}) or to those matching a filter (the Filtered Worklist, {FILTERED_GLOBAL_SUBSCRIPTION}; "
    "`filter=attribute=value,...`). Each subscribed workitem's state is reported at once. Answers 201 with "
    "Content-Location: the ws/wss URL of the AE's event channel, `/subscribers/{aetitle}` under this root.",
    responses=responses(
        _201="Subscribed; Content-Location is the event channel's URL.",
        _400=_BAD
        + " Also: a filter for another target, a Filtered Worklist subscription without one, a filter "
        "key that is not an attribute.",
        _404="No such workitem.",
    ),
)
async def subscribe(
    workitem: str,
    aetitle: str,
    request: Request,
    context: Context,
    deletionlock: str | None = Query(None, description="true: the workitem is kept while subscribed."),
    filter: str | None = Query(  # the parameter's name in PS3.18 11.10.1.2
        None,
        description="Filtered Worklist only: attribute=value[,attribute=value] (PS3.18 8.3.4.1 matching).",
    ),
) -> Response:
    target = checked_uid(workitem, WORKITEM_UID)
    ae_title = checked_ae_title(aetitle)
    lock = boolean("deletionlock", deletionlock)
    keys = filter_keys(request.query_params.multi_items(), _SUBSCRIBE_PARAMETERS)
    if target == FILTERED_GLOBAL_SUBSCRIPTION and not keys:
        raise DicomWebError(400, "a Filtered Worklist subscription needs a filter (PS3.18 Table 11.10.1-2)")
    if target != FILTERED_GLOBAL_SUBSCRIPTION and keys:
        raise DicomWebError(
            400,
            f"a filter applies to the Filtered Worklist ({FILTERED_GLOBAL_SUBSCRIPTION}) only (PS3.18 11.10.1.2)",
        )
    with workflow_errors(Transaction.SUBSCRIBE):
        await context.ups.subscribe(ae_title, target, deletion_lock=lock, filter_keys=keys or None)
    url = event_channel_url(request, context.settings, ae_title)
    return Response(status_code=201, headers={"Content-Location": url})


@router.delete(
    "/workitems/{workitem}/subscribers/{aetitle}",
    summary="Unsubscribe (UPS-RS, PS3.18 11.11)",
    description="Ends the AE's subscription to the workitem, or, for the Worklist and Filtered Worklist UIDs, its "
    "global subscription and every workitem subscription that one made (PS3.4 CC.2.3.2.3). Answers 200.",
    responses=responses(_200="Unsubscribed.", _400=_BAD, _404="No such workitem, or the AE holds no such subscription."),
)
async def unsubscribe(workitem: str, aetitle: str, context: Context) -> Response:
    target = checked_uid(workitem, WORKITEM_UID)
    ae_title = checked_ae_title(aetitle)
    with workflow_errors(Transaction.UNSUBSCRIBE):
        subscribed = await context.ups.unsubscribe(ae_title, target)
    if not subscribed:
        # PS3.18 11.11.3.1: 404 when there is no such subscription to end.
        raise DicomWebError(404, f"{ae_title} holds no subscription to {target}")
    return Response(status_code=200)


@router.post(
    "/workitems/{workitem}/subscribers/{aetitle}/suspend",
    summary="Suspend Global Subscription (UPS-RS, PS3.18 11.12)",
    description=f"For the Worklist ({GLOBAL_SUBSCRIPTION}) or Filtered Worklist ({FILTERED_GLOBAL_SUBSCRIPTION}): "
    "new workitems are no longer added to the AE's subscriptions; those it has stay (PS3.4 CC.2.3.2.4). "
    "Answers 200.",
    responses=responses(_200="Suspended.", _400=_BAD + " Also: the target is not the Worklist."),
)
async def suspend_global_subscription(workitem: str, aetitle: str, context: Context) -> Response:
    target = checked_uid(workitem, WORKITEM_UID)
    ae_title = checked_ae_title(aetitle)
    if target not in (GLOBAL_SUBSCRIPTION, FILTERED_GLOBAL_SUBSCRIPTION):
        raise DicomWebError(
            400, f"only a Worklist subscription ({GLOBAL_SUBSCRIPTION}) is suspended (PS3.18 Table 11.12.1-1)"
        )
    with workflow_errors(Transaction.SUSPEND):
        await context.ups.suspend_global(ae_title)
    return Response(status_code=200)
