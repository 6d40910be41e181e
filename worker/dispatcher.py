"""Webhook dispatch: claim due deliveries, send them with bounded concurrency, record the results.

Four parts run side by side: the claim loop keeps up to `held_limit` deliveries leased and not yet
attempted or in flight (claiming again when a quarter of that is free; never more than the senders
can start before the lease ends),
`concurrency` senders take them from an in-memory queue and make one attempt each (at most
`endpoint_concurrency` to one endpoint at a time: the rest of an endpoint's deliveries wait in
its own queue and move up as its requests finish, so no sender waits on a busy endpoint), the
recorder writes finished attempts in batches (one statement per batch), and the renewer extends
the leases of everything held, so no delivery this worker holds is ever claimed by another.
Waiting is "a notification, the poll timer, room for more, or stop", whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from loguru import logger

from shared.db import Database
from shared.environment import Environment
from shared.errors import DatabaseUnavailable, ParityError
from worker import metrics, queue
from worker.errors import is_transient
from worker.outage import Outage
from worker.queue import AttemptResult, ClaimedDelivery, Outcome
from worker.retry import RetryPolicy
from worker.sender import Response, Sender, webhook_body
from worker.settings import WorkerSettings

# An endpoint whose last attempt finished within this is "fast": it may be held deeper than its
# in-flight cap (WORKER_ENDPOINT_PREFETCH) for a minute. A slow or hanging one never is.
FAST_ATTEMPT_MS = 1_000
FAST_MEMORY_SECONDS = 60.0
# After a claim that found no more work, finished attempts (which free endpoints' caps) trigger the
# next claim no sooner than this.
TOP_UP_INTERVAL_SECONDS = 0.02


@dataclass
class DispatchStats:
    """Counters for the heartbeat and the logs."""

    claimed: int = 0
    recorded: int = 0
    succeeded: int = 0
    failed: int = 0
    lost_leases: int = 0
    outcome_unknown: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def classify(delivery: ClaimedDelivery, response: Response, policy: RetryPolicy) -> AttemptResult:
    """The result of one attempt: 2xx succeeds, 410 cancels (and disables the endpoint), anything
    else fails and the environment's retry policy says when to try again, if ever."""
    attempt_number = delivery.attempts + 1
    outcome: Outcome
    delay = 0.0
    gone = response.status_code == 410
    if response.ok:
        outcome = "succeeded"
    elif gone:
        outcome = "cancelled"
    else:
        decision = policy.decide(
            attempt_number - delivery.retry_base, retry_after=response.retry_after
        )
        outcome = "exhausted" if decision.give_up else "pending"
        delay = decision.delay_seconds
    error = response.error
    if error is None and not response.ok:
        error = f"the receiver answered {response.status_code}"
    return AttemptResult(
        delivery_id=delivery.id,
        endpoint_id=delivery.endpoint_id,
        attempt_number=attempt_number,
        outcome=outcome,
        delay_seconds=delay,
        started_at=response.started_at,
        duration_ms=response.duration_ms,
        status_code=response.status_code,
        response_body=response.body,
        error=error,
        disables_endpoint=gone,
    )


async def wait_any(*events: asyncio.Event, seconds: float | None = None) -> None:
    """Return when one of `events` is set, or after `seconds`."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


class Dispatcher:
    """Delivers webhooks for one worker process."""

    def __init__(
        self,
        db: Database,
        settings: WorkerSettings,
        sender: Sender,
        policies: dict[Environment, RetryPolicy],
        *,
        worker_id: str,
        wake: asyncio.Event,
        outage: Outage | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        self._sender = sender
        self._policies = policies
        self._worker_id = worker_id
        self._wake = wake
        self._outage = outage or Outage()
        self._budgets = queue.Budgets.from_config()
        self._held_limit = settings.held_limit
        self._next_settle = 0.0
        # A claim failed: it may have committed with its answer lost, leasing deliveries to this
        # worker that no sender has. The next claim releases them first.
        self._claim_lost = False
        self.stats = DispatchStats()
        # After a database error: short, since the pool replaces dead connections by itself.
        self._retry_pause = min(1.0, settings.poll_interval_seconds)
        self._held: set[UUID] = set()  # claimed and not yet recorded or released
        self._attempted_ids: set[UUID] = set()  # of those, attempts made, waiting to be recorded
        # Of those, attempts whose answer (410) disables their endpoint, and that endpoint: until
        # the answer is recorded, claims leave the endpoint out (the database still has it
        # enabled), so none of its deliveries is handed out meanwhile.
        self._disabling: dict[UUID, UUID] = {}
        self._inflight: dict[UUID, tuple[ClaimedDelivery, datetime]] = {}
        self._todo: asyncio.Queue[tuple[ClaimedDelivery, str]] = asyncio.Queue()
        # Per endpoint: deliveries queued or in flight (at most `endpoint_concurrency`), and those
        # waiting behind them.
        self._endpoint_busy: dict[UUID, int] = {}
        self._endpoint_waiting: dict[UUID, deque[tuple[ClaimedDelivery, str]]] = {}
        # Endpoints whose last attempt was quick, and when it finished (event loop time).
        self._endpoint_fast: dict[UUID, float] = {}
        # Deep enough to refill a fast endpoint between claims, never half the worker's hold.
        self._prefetch = max(
            settings.endpoint_concurrency, min(settings.endpoint_prefetch, self._held_limit // 2)
        )
        self._results: list[AttemptResult] = []
        self._results_ready = asyncio.Event()
        self._room = asyncio.Event()  # held deliveries were recorded or released
        self._attempted = asyncio.Event()  # an attempt finished (its sender is free)
        self._closing = False
        self._idle = asyncio.Event()  # set while no HTTP request is in flight
        self._idle.set()

    async def run(self, stop: asyncio.Event, *, drain: bool = False) -> None:
        """Deliver until `stop` is set (or, with `drain`, until nothing due is left)."""
        senders = [
            asyncio.create_task(self._send_loop(), name=f"sender-{i}")
            for i in range(self._settings.concurrency)
        ]
        recorder = asyncio.create_task(self._record_loop(), name="recorder")
        renewer = asyncio.create_task(self._renew_loop(), name="renewer")
        helpers = [*senders, recorder, renewer]
        for helper in helpers:
            # A helper that dies wakes the claim loop, which then raises its exception.
            helper.add_done_callback(lambda _: self._room.set())
        try:
            await self._claim_loop(stop, drain=drain, helpers=helpers)
        finally:
            try:
                await self._shut_down(senders, recorder)
            finally:
                renewer.cancel()
                await asyncio.gather(renewer, return_exceptions=True)

    # The claim loop -------------------------------------------------------------------------------

    async def _claim_loop(
        self, stop: asyncio.Event, *, drain: bool, helpers: list[asyncio.Task[None]]
    ) -> None:
        batch = self._held_limit
        while not stop.is_set():
            for helper in helpers:
                if helper.done():  # a sender or the recorder died: surface its exception
                    helper.result()
                    raise RuntimeError(f"{helper.get_name()} stopped")
            # Room is for deliveries still to start: attempts that finished and wait for the
            # recorder are held (and renewed) too, but need no sender, so they do not hold back
            # the next claim (twice the batch is the most held at once). Claiming when a quarter
            # is free keeps the senders fed while a claim is on its way.
            waiting = len(self._held) - len(self._attempted_ids)
            room = min(batch - waiting, 2 * batch - len(self._held))
            self._room.clear()
            self._attempted.clear()
            if room < max(1, batch // 4) and self._held:
                await wait_any(self._room, self._attempted, stop)
                continue
            self._wake.clear()  # before claiming: a notification arriving meanwhile is kept
            got = await self._claim(room)
            if got is None:
                # The database failed (the pause is taken): try again, rather than wait for new
                # work as after an empty claim (a notification that came meanwhile is spent).
                continue
            if got == room:
                continue
            if drain and got == 0 and not self._held:
                return
            # Nothing more is claimable now. What changes that: new work (a notification, or the
            # poll for retries coming due), or finished attempts (which free their endpoints'
            # caps). Those finish every millisecond at full speed: a claim after each would cost
            # a claim per delivery, so after one the next waits TOP_UP_INTERVAL_SECONDS (an
            # endpoint held deeper has enough queued to wait that long; new work does not wait).
            loop = asyncio.get_running_loop()
            claimed_at = loop.time()
            new_work = [] if drain else [self._wake]
            await wait_any(
                *new_work,
                self._room,
                self._attempted,
                stop,
                seconds=self._settings.poll_interval_seconds,
            )
            if not any(event.is_set() for event in (*new_work, stop)):
                pause = claimed_at + TOP_UP_INTERVAL_SECONDS - loop.time()
                if pause > 0:
                    await wait_any(*new_work, stop, seconds=pause)

    async def _claim(self, limit: int) -> int | None:
        """Claim up to `limit` deliveries and hand them to the senders: how many, or None if the
        database failed."""
        held = list(self._held)
        loop = asyncio.get_running_loop()
        # Lost attempts are rare (a worker died): looking for them once a second is plenty.
        settle = loop.time() >= self._next_settle
        # The whole transaction is one round trip (pipeline mode): while a claim is on its way
        # the senders may run dry, and under load each round trip waits for a turn of the busy
        # event loop. Finished attempts are not recorded here but by the recorder, beside it on
        # another connection: a claim carrying a record took as long as both (measured: 8%
        # fewer deliveries a second, 8% more worker CPU a delivery, than the two side by side).
        try:
            async with self._db.as_service_pipelined(queue.CLAIM_SETTINGS) as conn:
                releasing = (
                    await queue.send_release_unheld(conn, held=held, worker_id=self._worker_id)
                    if self._claim_lost
                    else None
                )
                settling = (
                    await queue.send_settle_lost(conn, held=held, budgets=self._budgets)
                    if settle
                    else None
                )
                claiming = await queue.send_claim(
                    conn,
                    worker_id=self._worker_id,
                    limit=limit,
                    lease_seconds=self._settings.lease_seconds,
                    per_endpoint=self._settings.endpoint_concurrency,
                    prefetch=self._prefetch,
                    fast=self._fast_endpoints(),
                    held=held,
                    attempted=list(self._attempted_ids),
                    gone=list(set(self._disabling.values())),
                    budgets=self._budgets,
                )
            # Committed: the results are in.
            released = await queue.read_released(releasing) if releasing is not None else set()
            settled = await queue.read_settled(settling) if settling is not None else {}
            claimed = await queue.read_claimed(claiming)
        except BaseException as exc:
            if not isinstance(exc, ParityError) or not is_transient(exc):
                raise
            self._claim_lost = True
            self._database_failed("claiming deliveries", exc)
            await asyncio.sleep(self._retry_pause)
            return None
        self._outage.ok()
        if self._claim_lost:
            self._claim_lost = False
            if released:
                logger.info(
                    "{} deliveries leased by a claim whose answer was lost are claimable again",
                    len(released),
                )
        if settle:
            self._next_settle = loop.time() + min(1.0, self._settings.lease_seconds / 4)
        if settled:
            exhausted = sum(1 for status in settled.values() if status == "exhausted")
            logger.warning(
                "{} deliveries were mid-attempt when their worker stopped: logged as outcome"
                " unknown and counted ({} out of attempts, now exhausted)",
                len(settled),
                exhausted,
            )
        self.stats.claimed += len(claimed)
        for delivery in claimed:
            self._held.add(delivery.id)
            self._enqueue(delivery, webhook_body(delivery))
        return len(claimed)

    def _enqueue(self, delivery: ClaimedDelivery, body: str) -> None:
        """To the senders if its endpoint has a free slot, else behind the endpoint's others."""
        endpoint = delivery.endpoint_id
        busy = self._endpoint_busy.get(endpoint, 0)
        if busy < self._settings.endpoint_concurrency:
            self._endpoint_busy[endpoint] = busy + 1
            self._todo.put_nowait((delivery, body))
        else:
            self._endpoint_waiting.setdefault(endpoint, deque()).append((delivery, body))

    def _fast_endpoints(self) -> list[UUID]:
        """Endpoints that answered quickly within the last minute (older ones are forgotten)."""
        since = asyncio.get_running_loop().time() - FAST_MEMORY_SECONDS
        for endpoint in [e for e, at in self._endpoint_fast.items() if at < since]:
            del self._endpoint_fast[endpoint]
        return list(self._endpoint_fast)

    async def _slot_freed(self, endpoint: UUID, *, fast: bool) -> None:
        """An attempt to `endpoint` finished: its next waiting delivery takes the slot. An endpoint
        that turned slow gives its waiting deliveries back, so they do not keep the worker's room
        while they wait behind requests that take the whole timeout."""
        if fast:
            self._endpoint_fast[endpoint] = asyncio.get_running_loop().time()
        else:
            self._endpoint_fast.pop(endpoint, None)
            waiting = self._endpoint_waiting.pop(endpoint, None)
            if waiting and not await self._give_back([d.id for d, _ in waiting]):
                # Kept (and renewed) rather than left to expire and be counted as lost.
                waiting.extend(self._endpoint_waiting.pop(endpoint, ()))
                self._endpoint_waiting[endpoint] = waiting
        waiting = self._endpoint_waiting.get(endpoint)
        if waiting:
            self._todo.put_nowait(waiting.popleft())
            if not waiting:
                del self._endpoint_waiting[endpoint]
            return
        busy = self._endpoint_busy.get(endpoint, 0) - 1
        if busy > 0:
            self._endpoint_busy[endpoint] = busy
        else:
            self._endpoint_busy.pop(endpoint, None)

    def _drop_waiting(self, ids: set[UUID]) -> None:
        """Forget waiting deliveries that moved on in the database (cancelled with their endpoint):
        sending them would reach a receiver that is disabled."""
        dropped: list[UUID] = []
        for endpoint, waiting in list(self._endpoint_waiting.items()):
            stay = deque(item for item in waiting if item[0].id not in ids)
            dropped += [delivery.id for delivery, _ in waiting if delivery.id in ids]
            if stay:
                self._endpoint_waiting[endpoint] = stay
            else:
                del self._endpoint_waiting[endpoint]
        if dropped:
            self._forget(dropped)

    def _database_failed(self, doing: str, exc: ParityError) -> None:
        if isinstance(exc, DatabaseUnavailable):
            self._outage.failed(doing, exc)
        else:
            logger.warning("{} failed ({}); trying again", doing, exc)

    # Renewer --------------------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        """Extend the leases of everything held every third of a lease, so a delivery waiting in
        memory (or a slow request) keeps its lease, and no other worker sends it meanwhile."""
        interval = self._settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            ids = list(self._held)
            if not ids:
                continue
            try:
                async with self._db.as_service() as conn:
                    kept = await queue.renew(
                        conn,
                        ids,
                        worker_id=self._worker_id,
                        lease_seconds=self._settings.lease_seconds,
                    )
            except ParityError as exc:
                if not is_transient(exc):
                    raise
                self._database_failed("renewing leases", exc)
                continue
            self._outage.ok()
            self._drop_waiting(set(ids) - kept)
            gone = [i for i in ids if i not in kept and i in self._held]
            if gone:
                # Cancelled meanwhile (endpoint disabled) or settled by another worker after an
                # outage: what is sent anyway is still logged as an attempt when it finishes.
                logger.info("{} held deliveries are no longer pending under our lease", len(gone))

    # Senders --------------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            delivery, body = await self._todo.get()
            self._inflight[delivery.id] = (delivery, datetime.now(UTC))
            self._idle.clear()
            try:
                response = await self._sender.send(delivery, body)
            finally:
                self._inflight.pop(delivery.id, None)
                if not self._inflight:
                    self._idle.set()
            self._finished(delivery, response)
            fast = response.duration_ms < FAST_ATTEMPT_MS
            await self._slot_freed(delivery.endpoint_id, fast=fast)

    def _finished(self, delivery: ClaimedDelivery, response: Response) -> None:
        result = classify(delivery, response, self._policies[delivery.environment])
        metrics.count_attempt(delivery.environment, result.outcome)
        if result.outcome == "succeeded":
            self.stats.succeeded += 1
            logger.debug("delivered {} (attempt {})", delivery.id, result.attempt_number)
        else:
            self.stats.failed += 1
            logger.info(
                "delivery {} attempt {} to endpoint {}: {} -> {}",
                delivery.id,
                result.attempt_number,
                delivery.endpoint_id,
                result.error,
                result.outcome,
            )
        self._results.append(result)
        self._attempted_ids.add(delivery.id)
        if result.disables_endpoint:
            self._disabling[delivery.id] = delivery.endpoint_id
        self._results_ready.set()
        self._attempted.set()

    # Recorder -------------------------------------------------------------------------------------

    async def _record_loop(self) -> None:
        # Results are written together: one statement for many attempts costs about what one
        # for a single attempt does, so a short wait for more to finish pays for itself.
        interval = self._settings.record_interval_seconds
        while not self._closing:
            await self._results_ready.wait()
            # Waiting for more only pays while other requests are still in flight.
            batching = len(self._results) < self._settings.concurrency and self._inflight
            if interval and batching and not self._closing:
                await asyncio.sleep(interval)
            self._results_ready.clear()
            await self._flush()

    async def _flush(self) -> None:
        """Record every finished attempt; on a database outage keep them and try again (leases are
        renewed meanwhile; one that still expires is settled as "outcome unknown" by whoever
        claims the delivery next)."""
        while self._results:
            batch, self._results = self._results, []
            try:
                recorded = await self._record(batch)
            except asyncio.CancelledError:
                self._results = batch + self._results  # still to record by whoever flushes next
                raise
            except ParityError as exc:
                self._results = batch + self._results
                if not is_transient(exc):
                    raise
                self._database_failed(f"recording {len(batch)} attempts", exc)
                await asyncio.sleep(self._retry_pause)
                continue
            self._outage.ok()
            self._recorded(batch, recorded)

    async def _record(self, batch: list[AttemptResult]) -> queue.Recorded:
        """Record `batch` in a transaction of its own: one round trip, unless a result disables
        its endpoint (which takes the record's answer first)."""
        if any(result.disables_endpoint for result in batch):
            async with self._db.as_service() as conn:
                return await queue.record(conn, batch, worker_id=self._worker_id)
        async with self._db.as_service_pipelined() as conn:
            recording = await queue.send_record(conn, batch, worker_id=self._worker_id)
        return await queue.read_recorded(recording)

    def _recorded(self, batch: list[AttemptResult], recorded: queue.Recorded) -> None:
        """`batch` is in the database (committed): forget it."""
        self._attempted_ids.difference_update(r.delivery_id for r in batch)
        for result in batch:
            self._disabling.pop(result.delivery_id, None)
        self._forget(r.delivery_id for r in batch)
        for result in batch:
            if result.disables_endpoint and result.delivery_id in recorded.applied:
                # Disabled: its pending deliveries are cancelled, its waiting ones too.
                waiting = self._endpoint_waiting.get(result.endpoint_id, ())
                self._drop_waiting({delivery.id for delivery, _ in waiting})
        self.stats.recorded += len(recorded.logged)
        moved_on = len(batch) - len(recorded.applied)
        if moved_on:
            self.stats.lost_leases += moved_on
            logger.info(
                "{} deliveries moved on during their attempt (endpoint disabled, or lease lost"
                " in an outage): {} of those attempts logged, the rest already logged as"
                " outcome unknown",
                moved_on,
                len(recorded.logged - recorded.applied),
            )

    def _forget(self, ids: Iterable[UUID]) -> None:
        self._held.difference_update(ids)
        self._room.set()

    # Stopping -------------------------------------------------------------------------------------

    async def _shut_down(
        self, senders: list[asyncio.Task[None]], recorder: asyncio.Task[None]
    ) -> None:
        """Release what was never sent, give in-flight requests `shutdown_grace_seconds` to finish,
        and record what finished; requests cut off past the grace period may have reached their
        receiver, so they are recorded as attempts with their outcome unknown (and retried)."""
        unsent: list[UUID] = []
        while not self._todo.empty():
            delivery, _ = self._todo.get_nowait()
            unsent.append(delivery.id)
        for waiting in self._endpoint_waiting.values():
            unsent += [delivery.id for delivery, _ in waiting]
        self._endpoint_waiting.clear()
        await self._release(unsent)
        grace = self._settings.shutdown_grace_seconds
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()
        interrupted = dict(self._inflight)  # before cancelling: senders forget them on the way out
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        for delivery, started_at in interrupted.values():
            self.stats.outcome_unknown += 1
            duration = datetime.now(UTC) - started_at
            self._finished(
                delivery,
                Response(
                    started_at=started_at,
                    duration_ms=round(duration.total_seconds() * 1000),
                    status_code=None,
                    body=None,
                    error=f"outcome unknown: the worker stopped while the request was in flight"
                    f" (past the {grace:g} s shutdown grace period)",
                    retry_after=None,
                ),
            )
        # The recorder writes what finished, then ends; cut off if the database does not answer.
        self._closing = True
        self._results_ready.set()
        try:
            async with asyncio.timeout(5.0):
                # The recorder's own failure, if any, was raised by the claim loop already.
                await asyncio.gather(recorder, return_exceptions=True)
                await self._flush()
        except (TimeoutError, ParityError) as exc:
            logger.error(
                "could not record {} attempts before stopping ({!r}): the next claim after"
                " their leases expire logs them as outcome unknown and sends them again",
                len(self._results),
                exc,
            )
        logger.info(
            "dispatcher stopped: {} claimed, {} recorded, {} released, {} cut off mid-request",
            self.stats.claimed,
            self.stats.recorded,
            len(unsent),
            len(interrupted),
        )

    async def _give_back(self, ids: list[UUID]) -> bool:
        """Release `ids` unattempted; False if the database could not be reached."""
        if not ids:
            return True
        try:
            async with asyncio.timeout(5.0), self._db.as_service() as conn:
                await queue.release(conn, ids, worker_id=self._worker_id)
        except (ParityError, TimeoutError) as exc:
            if isinstance(exc, ParityError) and not is_transient(exc):
                raise
            logger.warning("could not release {} leases ({})", len(ids), exc)
            return False
        self._forget(ids)
        return True

    async def _release(self, ids: list[UUID]) -> None:
        if not await self._give_back(ids):
            logger.warning("{} leases expire on their own", len(ids))
            self._forget(ids)
