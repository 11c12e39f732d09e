"""The kopf handlers: HPOStudy events in, keys onto the engine's queue out.

kopf serves the HPOStudy watch and the login (the liveness probe is the operator's metrics server, see
main.py); it stores nothing on the objects (no progress annotations, no finalizers), so a study can
be deleted while the operator is down. A study is validated in every reconcile, so one created
while the operator was away is handled on its start exactly like a new one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from .api import Api
from .engine import TRANSIENT_ERRORS, Engine
from .resources import GROUP, STUDY_PLURAL, TRIAL_PLURAL, VERSION

log = logging.getLogger("hpo_operator")
SERVED_POLL_SECONDS = 2.0
SERVED_LOG_SECONDS = 60.0


def _engine(memo: Any) -> Engine:
    engine: Engine = memo.leadership.engine
    return engine


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.scanning.disabled = True  # no CRD/namespace watching: nothing beyond the chart's RBAC
    settings.posting.level = logging.WARNING
    # kopf logs every handled event at INFO; with a report every fraction of a second that is noise
    # and CPU the reconciles need.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    # kopf would SIGKILL the process 10 minutes after it began to end on its own; main.py bounds
    # kopf's exit and runs it again instead.
    settings.process.ultimate_exiting_timeout = None
    await memo.leadership.start()
    try:
        await wait_until_served(_engine(memo).cluster.api)
    except asyncio.CancelledError:  # stopped while waiting: no cleanup handler runs after this
        await memo.leadership.stop()
        raise


def missing_resources(api: Api) -> list[str]:
    """The operator's custom resources the API server does not serve now (all, when it answers
    nothing)."""
    wanted = [STUDY_PLURAL, TRIAL_PLURAL]
    try:
        served = {r.get("name") for r in (api.get(f"/apis/{GROUP}/{VERSION}") or {}).get("resources") or []}
    except TRANSIENT_ERRORS:  # 404 while the group is not served; or no answer at all
        return wanted
    return [name for name in wanted if name not in served]


async def wait_until_served(
    api: Api, poll: float = SERVED_POLL_SECONDS, log_every: float = SERVED_LOG_SECONDS
) -> None:
    """Return once HPOStudies and HPOTrials are served. kopf looks the watched resources up once,
    after the startup handlers, and with scanning off never again: one missing then (CRDs applied
    after the operator, an API server that restarts) would go unwatched for the process's life,
    its changes seen only at the resync. The engine runs meanwhile."""
    logged_at: float | None = None
    loop = asyncio.get_running_loop()
    while missing := await asyncio.to_thread(missing_resources, api):
        if logged_at is None or loop.time() - logged_at >= log_every:
            logged_at = loop.time()
            names = ", ".join(f"{name}.{GROUP}/{VERSION}" for name in missing)
            log.warning("%s not served yet (are the CRDs applied?); watching starts once they are", names)
        await asyncio.sleep(poll)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    try:
        await memo.leadership.stop()
    finally:
        memo.ending.set()  # main.py waits on this, not on kopf's own exit


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """The same credentials as the engine's API client (kubeconfig or in-cluster)."""
    info: kopf.ConnectionInfo = memo.connection
    return info


@kopf.on.event(GROUP, VERSION, STUDY_PLURAL)
async def study_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # The study goes into the engine's cache, then onto its queue. The studies' HPOTrials, Jobs and
    # pods, and the GPU count, come from the operator's own informers (caches.py), which enqueue
    # the study on each change: a report appended by a trial starts the reconcile that may prune it.
    _engine(memo).study_event(type, body)
