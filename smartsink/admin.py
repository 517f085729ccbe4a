"""The admin HTTP listener (aiohttp): /health, /metrics, KumoMTA's inject API, the run ledger, and /state (what
the sink has learnt: see it, reset it).

It is served by the process that owns the sink as a whole: the only process with one worker, the
supervisor with several, so /metrics and /runs always describe the whole sink.

Every request is hostile input until read: a body is at most INJECT_MAX_BODY bytes (kumod's own
`request_body_limit`, 413 past it), JSON too deeply nested is a 400, a client that hangs up mid-body is dropped;
each is one counted (smartsink_admin_refused_total), rate-limited log line, never a traceback. With an admin
token (--admin-token), every request that changes state (any method but GET and HEAD) must carry it. An inject
request, once read, is answered by the inject front-end (smartsink.engines.inject).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mailload import contract
from smartsink import inject as inject_api
from smartsink import logs, metrics
from smartsink.engines import inject as injection
from smartsink.ledger import RunLedger
from smartsink.limits.state import VIEW_LIMIT, VIEW_LIMIT_MAX, Filter, SharedState
from smartsink.overrides import OverrideKeeper
from smartsink.policy.values import domain_problem, rule_settings, window_timing
from smartsink.responder import SinkContext

log = logging.getLogger("smartsink.admin")
hostile = logs.Limited(log)

# kumod's HTTP listener refuses a request body over its request_body_limit (2 MB by default) with 413: so does the
# sink, on every admin endpoint. At about 40 bytes a recipient that is some 50,000 recipients a request.
INJECT_MAX_BODY = 2 * 1024 * 1024
TOO_LARGE = "Failed to buffer the request body: length limit exceeded"
READING = ("GET", "HEAD", "OPTIONS")  # methods that change nothing: no admin credential asked


class Unreadable(Exception):
    """A request body that cannot be read (gone mid-body, too big, not JSON, too deep): its status and text."""

    def __init__(self, status: int, text: str, reason: str):
        super().__init__(text)
        self.status, self.text, self.reason = status, text, reason


async def read_json(request: web.Request) -> Any:
    """The body as JSON, or Unreadable."""
    try:
        text = await request.text()
    except web.HTTPRequestEntityTooLarge:
        raise Unreadable(413, TOO_LARGE, "body") from None
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        raise Unreadable(400, f"the client went away mid-body ({type(e).__name__})", "hangup") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise Unreadable(400, "Failed to parse the request body as JSON: nested too deeply", "body") from None
    except ValueError as e:
        raise Unreadable(400, f"Failed to parse the request body as JSON: {e}", "body") from None


def refused(request: web.Request, reason: str, text: str) -> None:
    """Count a refused admin request and say so in one (rate-limited) line."""
    metrics.child(metrics.ADMIN_REFUSED, reason).inc()
    hostile.warning("admin %s %s from %s refused (%s): %s", request.method, request.path, request.remote, reason, text)


def credential_ok(header: str | None, token: str) -> bool:
    """`Authorization: Bearer TOKEN`, or Basic with TOKEN as the password (any user)."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    else:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


def _guard(token: str | None) -> Any:
    """The middleware: the admin credential on writing requests, and hostile bodies answered in one line."""

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        writes = token is not None and request.method not in READING
        if writes and not credential_ok(request.headers.get("Authorization"), token or ""):
            refused(request, "credential", "no admin credential, or not the right one")
            return web.json_response(
                {"error": "this sink's admin API needs its token for requests that change state"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="smartsink admin"'},
            )
        try:
            return await handler(request)
        except Unreadable as e:
            refused(request, e.reason, e.text)
            return web.Response(status=e.status, text=e.text)

    return guard


class AdminSource:
    """What the admin listener reads: supplied by the single-process sink or by the supervisor."""

    def __init__(
        self,
        ctx: SinkContext,
        health: Callable[[], dict[str, Any]],
        ledger: Callable[[str], Awaitable[RunLedger | None]],
        keeper: OverrideKeeper | None = None,
        started: float | None = None,
        state: SharedState | None = None,
        barrier: Callable[[], Awaitable[None]] | None = None,
    ):
        self.ctx = ctx
        self.health = health
        self.ledger = ledger
        self.keeper = keeper  # the policy's windows and the API's overrides
        self.started = time.time() if started is None else started  # /health's uptime counts from it
        self.state = state  # the sink-wide state (the supervisor's with several workers)
        self.barrier = barrier  # waits until every worker's reports are in it


def make_app(source: AdminSource) -> web.Application:
    token = source.ctx.config.admin_secret
    app = web.Application(client_max_size=INJECT_MAX_BODY, middlewares=[_guard(token)])

    async def health(request: web.Request) -> web.Response:
        """The details; 503 while the sink does not serve SMTP with every worker (as /health/ready)."""
        body = source.health()
        body.setdefault("status", "ok")
        body["uptime_s"] = round(time.time() - source.started, 3)
        return web.json_response(body, status=200 if body.get("serving", True) else 503)

    async def live(request: web.Request) -> web.Response:
        """Kubernetes' liveness: this process answers (a stuck worker is the supervisor's to replace)."""
        return web.json_response({"status": "live"})

    async def ready(request: web.Request) -> web.Response:
        """Kubernetes' readiness: 200 once every worker serves SMTP, 503 before and while one does not."""
        serving = source.health().get("serving", True)
        return web.json_response({"ready": serving}, status=200 if serving else 503)

    async def metrics_text(request: web.Request) -> web.Response:
        state = source.state
        families = [] if state is None else metrics.state_families(state.summary(), state.by_domain())
        metrics.publish()  # on the loop's thread, where the counting happens
        data = await asyncio.get_running_loop().run_in_executor(None, metrics.exposition, families)
        return web.Response(body=data, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def inject(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization")
        if token is not None and header and header.lower().startswith("bearer "):
            header = None  # the admin token, checked already, stands in for --auth's credentials
        try:
            credentials = inject_api.basic_credentials(header, source.ctx.config.auth)
            injected = await _read_inject(request)
        except inject_api.Refusal as e:
            if e.status == 401:
                metrics.child(metrics.AUTHS, "failed").inc()
                return web.Response(status=401, text=e.text, headers={"WWW-Authenticate": 'Basic realm="smartsink"'})
            return web.Response(status=e.status, text=e.text)
        if credentials is not None:
            metrics.child(metrics.AUTHS, "ok").inc()
        results = await injection.inject(source.ctx, request.remote or "http", injected)
        failed = [(email, err) for email, err in zip(injected.recipients, results, strict=True) if err]
        return web.json_response(
            {
                "success_count": len(results) - len(failed),
                "fail_count": len(failed),
                "failed_recipients": [email for email, _ in failed],
                "errors": [f"{email}: {err}" for email, err in failed],
            }
        )

    async def run(request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        if not contract.RUN_ID.match(run_id):
            return _bad(f"a run id is 1 to {contract.RUN_ID_MAX} letters, digits, '-' or '_'")
        ledger = await source.ledger(run_id)
        if ledger is None:
            return web.json_response(
                {"run_id": run_id, "error": "this sink has seen no message of that run"}, status=404
            )
        body: dict[str, Any] = {"run_id": run_id, **ledger.summary()}
        if request.query.get("marks") == "1":
            # One byte per id (see mailload.contract), compressed: lets trafficgen reconcile id by id.
            body["marks"] = base64.b64encode(zlib.compress(bytes(ledger.marks), 6)).decode("ascii")
            body["transit"] = ledger.transit_histograms()
        return web.json_response(body)

    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_post("/api/inject/v1", inject)
    app.router.add_get(contract.runs_path("{run_id}"), run)
    if source.keeper is not None:
        OverrideRoutes(source.keeper).add_to(app)
    if source.state is not None:
        StateRoutes(source).add_to(app)
    return app


class StateRoutes:
    """/state: what the sink has learnt, as a provider remembers a sender (smartsink.limits.state).

    GET answers it (each kind counted, at most `?limit=` entries of each, 100 unless asked, 1000 at most) with the
    override windows; DELETE forgets it: all, or `?domain=NAME` (a recipient domain as the policy names it), or
    `?address=IP` (a client, or a network as /state shows it), or both."""

    def __init__(self, source: AdminSource):
        assert source.state is not None
        self.source = source
        self.state = source.state

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/state", self.show)
        app.router.add_delete("/state", self.forget)

    async def _settled(self) -> None:
        if self.source.barrier is not None:
            await self.source.barrier()

    async def show(self, request: web.Request) -> web.Response:
        query = request.query
        unknown = sorted(set(query) - {"limit"})
        if unknown:
            return _bad(f"GET /state takes ?limit=N, not {unknown[0]!r}")
        limit = VIEW_LIMIT
        if "limit" in query:
            text = query["limit"]
            if not text.isdigit() or not 1 <= int(text) <= VIEW_LIMIT_MAX:
                return _bad(f"limit must be a whole number from 1 to {VIEW_LIMIT_MAX}, got {text!r}")
            limit = int(text)
        await self._settled()
        body = self.state.view(limit)
        keeper = self.source.keeper
        body["overrides"] = [] if keeper is None else keeper.overrides.public()
        return web.json_response(body)

    async def forget(self, request: web.Request) -> web.Response:
        try:
            only = _state_filter(request.query, self.source.ctx.suffixes)
        except ValueError as e:
            return _bad(str(e))
        await self._settled()
        removed = self.state.forget(only)
        metrics.STATE_RESETS.inc()
        log.info(
            "state reset (%s): %s",
            ", ".join(f"{k}={v}" for k, v in (("domain", only.domain), ("address", only.address)) if v) or "all",
            ", ".join(f"{n} {kind}" for kind, n in removed.items()),
        )
        return web.json_response({"domain": only.domain, "address": only.address, "removed": removed})


def _state_filter(query: Any, suffixes: tuple[str, ...]) -> Filter:
    """DELETE /state's ?domain= and ?address=, checked; ValueError names the bad one."""
    unknown = sorted(set(query) - {"domain", "address"})
    if unknown:
        raise ValueError(f"DELETE /state takes ?domain=NAME and ?address=IP, not {unknown[0]!r}")
    domain = query.get("domain")
    problem = None if domain is None else domain_problem(domain)
    if problem is not None:
        raise ValueError(f'domain must be a domain name, like "gmail.com": {domain!r} {problem}')
    address = query.get("address")
    if address is not None:
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            raise ValueError(f'address must be an IP address or network, like "127.0.0.1", got {address!r}') from None
    return Filter(domain, address, suffixes)


class OverrideRoutes:
    """/policy/overrides: change a domain's rules now, for a while, across every worker (smartsink.overrides).

    POST {"domain": "gmail.com", "defer": 100, "length": "5m"} (any rule key a schedule window takes; "start":
    a delay, or "at": a time) answers 201 and the override; GET lists them with the policy's schedule; DELETE
    /policy/overrides/{id} removes one, DELETE /policy/overrides every one the API added."""

    def __init__(self, keeper: OverrideKeeper):
        self.keeper = keeper
        self.overrides = keeper.overrides

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/policy/overrides", self.list)
        app.router.add_post("/policy/overrides", self.create)
        app.router.add_delete("/policy/overrides", self.clear)
        app.router.add_delete("/policy/overrides/{override_id}", self.delete)

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response({"overrides": self.overrides.public()})

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = await read_json(request)
        except Unreadable as e:
            if e.reason == "hangup":
                raise
            refused(request, e.reason, e.text)
            return _bad(f"the body is not JSON: {e.text}" if e.status == 400 else e.text, e.status)
        if not isinstance(body, dict):
            return _bad("the body must be a JSON object")
        domain = body.pop("domain", None)
        if not isinstance(domain, str) or not domain.strip():
            return _bad('domain must be a domain name, like "gmail.com"')
        problem = domain_problem(domain.strip())
        if problem is not None:
            return _bad(f"domain: {problem}")
        timing = {k: body.pop(k) for k in ("start", "at", "length") if k in body}
        try:
            start, length, relative = window_timing(timing)
            settings = rule_settings(body)
            if not settings:
                raise ValueError("changes nothing: give a rule key, like defer = 100")
            delay = start if relative else start - time.time()
            override = self.overrides.add(domain.strip(), settings, max(0.0, delay), length)
        except ValueError as e:
            return _bad(str(e))
        self.keeper.changed()
        await self.keeper.settled()
        return web.json_response({"override": override.public(time.time())}, status=201)

    async def delete(self, request: web.Request) -> web.Response:
        if not self.overrides.remove(request.match_info["override_id"]):
            return web.json_response(
                {"error": "no such override (the policy's schedule is changed in its file)"}, status=404
            )
        self.keeper.changed()
        await self.keeper.settled()
        return web.Response(status=204)

    async def clear(self, request: web.Request) -> web.Response:
        removed = self.overrides.clear()
        self.keeper.changed()
        await self.keeper.settled()
        return web.json_response({"removed": removed})


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _read_inject(request: web.Request) -> inject_api.Request:
    """The request as kumod reads it, or its Refusal (415, 413, 400, 422 or 500, with kumod's text); Unreadable
    when the client went away."""
    inject_api.check_content_type(request.headers.get("Content-Type"))
    try:
        body = await read_json(request)
    except Unreadable as e:
        if e.reason == "hangup":
            raise
        refused(request, e.reason, e.text)
        raise inject_api.Refusal(e.status, e.text) from None
    return inject_api.read(body)


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, tuple[str, int]]:
    """Serve the admin app; return the runner and the bound address (port 0 resolved)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[:2] if sockets else (host, port)
    return runner, (bound[0], bound[1])
