"""The proxy: one client request in, attempts on replicas, one response out.

Per request: match the route, read the body (bounded; kept so a retry can resend it; on
an OpenAI route its ``model`` picks the pool), then up to ``retries.attempts`` attempts,
each on a replica the pool hands out and never on one already tried. An attempt is
retried only while nothing has reached the client: on no connection, a reset, a timeout
before the response head, or a 502/503/504 from the replica, and only inside the pool's
retry budget. An attempt slow to get its head is also hedged: a backup goes to another
replica and the first good head wins (``Backup``); the attempt it outran is cut, except
one per replica at a time, which runs on as the replica's probe (its answer dropped, its
latency learnt: a replica slowed down keeps answering someone, so it is priced as slow,
not taken for hung, and seen when it recovers). Once the response head arrives the body
is streamed through as it is produced (SSE, chunked; ``relay``), and the replica's slot is
held until the last byte, since the model is busy until then; an LLM answer's tokens are
counted on the way (``tokens``), and a streamed one's latency is its first token's. A
client that hangs up before the response head cancels its request wherever it is
(queued, or on a replica).

Deadlines: waiting for a slot is bounded by the queue (or cold-start) timeout; from the
first slot on, ``timeouts.request_s`` bounds the wait for a response head over all
attempts (504 when it passes); ``timeouts.per_try_s`` bounds one attempt, so a hung
replica can be abandoned for another while time remains; while a body streams,
``request_s`` is the longest silence allowed between two chunks. A request with a
deadline of its own (the route's ``deadline_s``, or ``X-Deadline-Ms``) is bounded by it
from arrival to response head, and refused at once if it is expected to wait longer
(``admission.py``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from gateway.dataplane.admission import deadline_of
from gateway.dataplane.backup import Answer, Backup, Outrun
from gateway.dataplane.headers import (
    Network,
    forwarding_headers,
    is_trusted,
    request_problem,
    response_headers,
    safe_request_id,
    split_request,
)
from gateway.dataplane.openai import answer_error, answer_models, asks_for_models
from gateway.dataplane.pool import NoCapacity, Pool
from gateway.dataplane.prefix import parse_body, prompt_blocks
from gateway.dataplane.priority import Target, rank_of, tenant_of
from gateway.dataplane.queue import PLAIN, Ask
from gateway.dataplane.relay import CLIENT_CLOSED, relay
from gateway.dataplane.replica import Replica
from gateway.dataplane.retry import RETRYABLE_STATUS
from gateway.dataplane.routing import Router, UnknownModel
from gateway.dataplane.tokens import EventStream, Tokens, access_fields, is_event_stream
from gateway.http.client import ConnectFailed, Detach, Timeouts, Upstream, UpstreamError
from gateway.http.exchange import BadRequest, BodyBufferFull, BodyTimeout, Exchange, error_response
from gateway.recorder import NULL_RECORDER, Recorder

log = logging.getLogger(__name__)

COMPLETIONS = "/completions"  # OpenAI's chat and text completions: their usage is counted


class _Failed(Exception):
    """An attempt that produced no response: the client would get ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        self.status, self.reason = status, reason


NO_ATTEMPT = _Failed(503, "no attempt")


@dataclass(slots=True)
class _Call:
    """One client request on its way through."""

    exchange: Exchange
    pool: Pool
    request_id: str
    started: float
    host_missing: bool = False
    model: str = ""  # the configured model it was routed by ("": by path alone)
    ask: Ask = PLAIN  # its prompt's blocks (if the pool's policy reads them), class, tenant
    body: bytes = b""  # read whole, so that every attempt can send it
    headers: list[tuple[str, str]] = field(default_factory=list)  # what goes to a replica
    deadline: float | None = None  # for the response head, set once the first slot is had:
    # queue waits have their own bounds, so a long cold start does not eat the request's time
    due: float | None = None  # the client's deadline (route or X-Deadline-Ms), if it has one:
    # it bounds everything, queue waits included
    attempts: int = 0  # sent to a replica so far, hedges included
    tried: frozenset[str] = frozenset()  # the replicas they went to


class Proxy:
    def __init__(
        self,
        router: Router[Target[Pool]],
        upstream: Upstream,
        recorder: Recorder = NULL_RECORDER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.router = router
        self.upstream = upstream
        self.recorder = recorder
        self.clock = clock
        self.max_body_bytes = 10 * 1024 * 1024  # larger request bodies get 413
        self.trusted_proxies: tuple[Network, ...] = ()  # peers whose X-Forwarded-* are believed
        self._ids = random.Random()  # request ids: unique, not secret, far cheaper than urandom

    async def handle(self, exchange: Exchange) -> None:
        head = split_request(exchange.headers)
        request_id = safe_request_id(head.request_id) or f"{self._ids.getrandbits(128):032x}"
        tag = [("X-Request-ID", request_id)]
        problem = request_problem(exchange.path, exchange.version, head.hosts, head.host)
        if problem is not None:  # refused before routing: nothing of it reaches a replica
            return error_response(exchange, 400, problem, tag)
        route = self.router.match(exchange.path)
        if route is None:
            return error_response(exchange, 404, f"no route for {exchange.path}", tag)
        if asks_for_models(route, exchange):
            return answer_models(exchange, route, tag)
        target = route.default or next(iter(route.models.values()))  # until the body says
        pool = target.pool
        call = _Call(exchange, pool, request_id, self.clock())
        try:
            body = await exchange.body(self.max_body_bytes)
        except BadRequest as exc:
            return self._error(call, 400, f"malformed request body: {exc}")
        except BodyTimeout as exc:
            return self._error(call, 408, f"request body timed out: {exc}")
        except BodyBufferFull as exc:
            return self._error(call, 503, f"no capacity: {exc}", [("Retry-After", "1")])
        except ConnectionResetError:
            exchange.abort()
            return self._finish(call, "", CLIENT_CLOSED)
        if body is None:
            return self._error(call, 413, f"request body larger than {self.max_body_bytes} bytes")
        request = parse_body(body) if route.models or pool.reads_prompt else None
        try:
            target, call.model = route.pool_for(request)
        except UnknownModel as exc:
            answer_error(exchange, exc, tag)
            return self._finish(call, "", exc.status)
        call.pool = pool = target.pool
        peer, noted = exchange.remote, head.noted
        try:
            deadline_s = deadline_of(target.deadline_s, noted.get("x-deadline-ms"))
        except ValueError as exc:
            return self._error(call, 400, str(exc))
        if deadline_s is not None:
            call.due = call.started + deadline_s
        call.ask = Ask(
            prompt_blocks(request) if pool.reads_prompt else (),
            rank_of(target, noted.get("x-priority")),
            tenant_of(noted.get("x-tenant"), noted.get("authorization"), peer),
            None if call.due is None else max(0.0, call.due - self.clock()),
        )
        headers = head.end_to_end
        headers += forwarding_headers(head.forwarding, peer, is_trusted(peer, self.trusted_proxies))
        headers += tag
        call.host_missing = head.hosts == 0
        call.body, call.headers = body, headers

        pool.record_request()
        try:
            await self._forward(call)
        except asyncio.CancelledError:
            if exchange.client_gone:
                self._finish(call, "", CLIENT_CLOSED)
            raise

    async def _forward(self, call: _Call) -> None:
        pool = call.pool
        attempts = pool.settings.retries.attempts
        budget = pool.retry_budget
        failure = NO_ATTEMPT
        while call.attempts < attempts:
            retry = call.attempts > 0
            if retry:
                if not pool.has_alternative(call.tried):
                    break
                if not budget.try_retry():
                    self.recorder.retry_denied(pool.name)
                    break
                self.recorder.retry(pool.name, failure.reason)
            try:
                replica, cold_wait_s = await self._acquire(pool, call)
            except NoCapacity as exc:
                if retry:
                    break
                self.recorder.rejected(pool.name, exc.reason)
                retry_after = [("Retry-After", str(exc.retry_after_s))]
                return self._error(call, exc.status, f"no capacity: {exc.reason}", retry_after)
            except _Failed as exc:
                failure = exc
                break
            call.attempts += 1
            call.tried |= {replica.id}
            if call.deadline is None:
                call.deadline = self.clock() + pool.settings.timeouts.request_s
                if call.due is not None:
                    call.deadline = min(call.deadline, call.due)
            hedge = self._hedge(call, replica) if call.attempts < attempts else None
            try:
                answer = await self._attempt(call, replica, hedge)
            except _Failed as exc:
                failure = exc
                continue
            answer.cold_wait_s = cold_wait_s
            status = answer.response.status
            if (
                status in RETRYABLE_STATUS
                and call.attempts < attempts
                and pool.has_alternative(call.tried)
                and budget.allows_retry()
            ):
                failure = _Failed(status, f"status_{status}")
                self._discard(answer)
                continue
            return await self._relay(call, answer)
        self._error(call, failure.status, f"upstream failed: {failure.reason}")

    def _hedge(self, call: _Call, replica: Replica) -> Backup | None:
        """The backup plan for the attempt about to be sent to ``replica``; None when the
        pool does not hedge (off, or its tail not known yet)."""
        pool = call.pool
        delay_s = pool.hedge_after(replica)
        if delay_s is None:
            return None

        def start_backup() -> asyncio.Task[Answer] | None:
            replica = pool.try_hedge(call.tried)
            if replica is None:
                return None
            call.attempts += 1
            call.tried |= {replica.id}
            self.recorder.hedge(pool.name)
            return asyncio.ensure_future(self._send(call, replica))

        level, kind = replica.working, call.exchange.path  # as ``_send`` will see them

        def outrun() -> Exception:
            if not pool.start_probe(replica):
                return Outrun()

            def finished(latency_s: float, status: int | None) -> None:
                pool.end_probe(replica, latency_s, status, level, kind)

            return Detach(finished)

        return Backup(start_backup, delay_s, outrun)

    async def _attempt(self, call: _Call, replica: Replica, hedge: Backup | None) -> Answer:
        """``_send``, and the backup attempt ``hedge`` may have added: the answer that
        stands. A good first answer wins and the backup is dropped; otherwise (a failure,
        a retryable status, or outrun by the backup) the backup's outcome stands."""
        if hedge is None:
            return await self._send(call, replica)
        answer: Answer | None = None
        try:
            answer = await self._send(call, replica, hedge.arm)
        except _Failed:
            if hedge.backup is None:
                raise
        except BaseException:
            hedge.drop(self._discard)  # the client left: the backup goes too
            raise
        finally:
            hedge.disarm()
        backup = hedge.backup
        if backup is None:
            assert answer is not None
            return answer
        if answer is not None:
            if answer.response.status not in RETRYABLE_STATUS:
                hedge.drop(self._discard)
                return answer
            self._discard(answer)
        answer = await backup
        self.recorder.hedge_won(call.pool.name)
        return answer

    def _discard(self, answer: Answer) -> None:
        """Drop an answer that will not be relayed, giving its slot back with its status."""
        answer.response.release()
        answer.pool.release(
            answer.replica, answer.ttfb_s, answer.response.status, answer.level, answer.kind
        )

    async def _acquire(self, pool: Pool, call: _Call) -> tuple[Replica, float | None]:
        """A slot, and how long it waited for a replica to start (None: it did not)."""
        cold = pool.is_cold
        since = self.clock()
        if call.deadline is None:
            replica = await pool.acquire(call.tried, call.ask)  # the queue bounds the wait
        else:
            try:
                async with asyncio.timeout(call.deadline - since):
                    replica = await pool.acquire(call.tried, call.ask)
            except TimeoutError:
                raise _Failed(504, "deadline") from None
        return replica, self.clock() - since if cold else None

    async def _send(
        self,
        call: _Call,
        replica: Replica,
        sent: Callable[[asyncio.Future[None]], None] | None = None,
    ) -> Answer:
        """One attempt up to the response head. On success the caller owns the response
        and the slot; on failure (``_Failed``) the slot is already given back. ``sent``:
        upstream's hook on the wait for the head (a hedge arms itself there)."""
        exchange, pool = call.exchange, call.pool
        timeouts = pool.settings.timeouts
        headers = call.headers
        if call.host_missing:  # an HTTP/1.0 client may omit Host (request_problem)
            headers = [*headers, ("Host", f"{replica.host}:{replica.port}")]
        assert call.deadline is not None  # set with the first slot
        t0, level = self.clock(), replica.working
        try:
            response = await self.upstream.request(
                exchange.method,
                replica.address,
                exchange.target,  # byte-exact: path and query as the client sent them
                headers,
                call.body,
                Timeouts(
                    timeouts.connect_s,
                    min(timeouts.per_try_s or timeouts.request_s, call.deadline - t0),
                    timeouts.request_s,
                ),
                sent,
            )
        except TimeoutError:
            pool.release(replica, self.clock() - t0, None)
            raise _Failed(504, "timeout") from None
        except (UpstreamError, OSError) as exc:
            pool.release(replica, self.clock() - t0, None)
            raise _Failed(502, "connect" if isinstance(exc, ConnectFailed) else "reset") from None
        except Outrun:
            pool.outrun(replica, self.clock() - t0)
            raise _Failed(504, "outrun") from None
        except Detach:  # the probe holds the slot until it ends (``pool.end_probe``)
            raise _Failed(504, "outrun") from None
        except BaseException:
            pool.abandon(replica)
            raise
        return Answer(pool, replica, response, self.clock() - t0, level, exchange.path)

    async def _relay(self, call: _Call, answer: Answer) -> None:
        """Pass the response through (``relay``); nothing after this point may retry. The
        slot is held to the last byte and then released with the replica's outcome: a
        broken upstream stream counts against the replica, a client that went away does
        not. An event stream's latency, for the policies, is its first token's."""
        upstream, replica, pool = answer.response, answer.replica, call.pool
        latency_s = answer.ttfb_s
        outcome: int | None = upstream.status
        headers = response_headers(upstream.headers)
        if answer.cold_wait_s is not None:
            headers.append(("X-Cold-Start-Wait", f"{answer.cold_wait_s:.3f}"))
            self.recorder.cold_start_wait(pool.name, answer.cold_wait_s)
        stream = None
        if is_event_stream(upstream.headers):
            stream = EventStream(self.recorder.inter_token_observer(pool.name, call.model))
        head_at = self.clock()
        try:
            tag = [("X-Request-ID", call.request_id)]
            counted = call.exchange.path.endswith(COMPLETIONS)
            parked = partial(pool.park, replica)
            sent = await relay(
                call.exchange, upstream, headers, tag, self.clock, stream, counted, parked
            )
            if not sent.replica_ok:
                outcome = None
            tokens = sent.tokens
            if tokens is not None and tokens.first_at is not None:
                latency_s += tokens.first_at - head_at
            self._finish(call, replica.id, sent.status, tokens)
        finally:
            upstream.release()
            pool.release(replica, latency_s, outcome, answer.level, answer.kind)

    def _error(
        self,
        call: _Call,
        status: int,
        message: str,
        headers: list[tuple[str, str]] | None = None,
        replica_id: str = "",
    ) -> None:
        """An answer from the gateway itself; like every answer, it carries the id."""
        headers = [("X-Request-ID", call.request_id), *(headers or [])]
        error_response(call.exchange, status, message, headers)
        self._finish(call, replica_id, status)

    def _finish(
        self, call: _Call, replica_id: str, status: int, tokens: Tokens | None = None
    ) -> None:
        """Count and (at debug level) log a finished request, and its tokens if counted."""
        elapsed = self.clock() - call.started
        pool = call.pool.name
        self.recorder.request_done(pool, replica_id, status, elapsed)
        ttft_s = None
        if tokens is not None:
            ttft_s = None if tokens.first_at is None else tokens.first_at - call.started
            self.recorder.tokens_done(pool, call.model, ttft_s, tokens)
        if log.isEnabledFor(logging.DEBUG):
            fields = {
                "request_id": call.request_id,
                "method": call.exchange.method,
                "path": call.exchange.path,
                "pool": pool,
                "replica": replica_id,
                "status": status,
                "latency_ms": round(elapsed * 1000, 3),
            }
            if tokens is not None:
                fields.update(access_fields(call.model, ttft_s, tokens))
            log.debug("request", extra=fields)
