"""The tenants' quota tickets, as the gateway takes and gives them back.

A generation reserves its worst case before it runs (`admit`; a grounded chat resizes its
ticket once its prompt is known) and gives the ticket back with the tokens it really used;
work that is not a generation is charged before it is done (`charge`, `charged`); a
request refused for its content that took no ticket is charged its body's estimated
tokens (`debit`). Over
quota: `APIError` 429 with Retry-After. No quota client, or a tenant without limits: no
ticket (None) and nothing to give back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

from tierline.cluster.spec import QuotaSpec
from tierline.deployments.errors import APIError
from tierline.deployments.gateway.quota.service import (
    Admission,
    QuotaClient,
    is_limited,
    note_ticket,
    retry_after_header,
)

__all__ = ["Tickets"]


class Tickets:
    def __init__(self, quota: QuotaClient | None, quota_for: Callable[[str], QuotaSpec]) -> None:
        self.quota = quota
        self.quota_for = quota_for

    async def admit(self, tenant: str, tokens: int, headers: Mapping[str, str]) -> int | None:
        """Reserve `tokens` (the plan's worst case on the tier) for `tenant`; 429 with
        Retry-After when over. None when the tenant has no quota to keep."""
        admission = await self.try_admit(tenant, tokens)
        if admission is None:
            return None
        if not admission.ok:
            raise self.over_quota(tenant, tokens, admission, headers)
        return admission.ticket

    async def try_admit(
        self, tenant: str, tokens: int, downgrade: bool = False
    ) -> Admission | None:
        """`admit`'s answer without raising: the ledger's `Admission` (`downgrade`: charged
        past the budget, `on_budget: downgrade`); None when the tenant has no quota."""
        if self.quota is None or not is_limited(self.quota_for(tenant)):
            return None
        if downgrade:
            admission = await self.quota.admit(tenant, tokens, downgrade=True)
        else:
            admission = await self.quota.admit(tenant, tokens)
        note_ticket(admission)
        return admission

    async def resize(
        self, tenant: str, ticket: int, tokens: int, headers: Mapping[str, str]
    ) -> None:
        """Reserve `tokens` on a ticket taken earlier (a grounded chat's, before retrieval)."""
        assert self.quota is not None
        admission = await self.quota.resize(ticket, tokens)
        if not admission.ok:
            raise self.over_quota(tenant, tokens, admission, headers)

    async def release(self, ticket: int | None, used_tokens: int | None) -> None:
        """Give a ticket back with the tokens used (None: unknown, the reservation stays)."""
        if ticket is not None and self.quota is not None:
            await self.quota.release(ticket, used_tokens)

    async def debit(self, tenant: str, tokens: int) -> None:
        """Charge `tokens` already spent on a refused request (past the tenant's budget if
        need be: the work is done). Nothing when the tenant has no quota."""
        if self.quota is not None and is_limited(self.quota_for(tenant)):
            await self.quota.debit(tenant, tokens)

    def over_quota(
        self, tenant: str, tokens: int, admission: Admission, headers: Mapping[str, str]
    ) -> APIError:
        limit = self.quota_for(tenant).tokens_per_min
        if limit is not None and tokens > limit:
            message = (
                f"this request may cost up to {tokens} tokens (its prompts x n plus the "
                "completion budget: max_tokens, or the tier's remaining context when "
                f"max_tokens is unset), more than tenant {tenant!r}'s tokens_per_min "
                f"({limit}); set a smaller max_tokens"
            )
        else:
            message = f"tenant {tenant!r} is over its quota ({admission.reason}); retry later"
        return APIError(
            429,
            message,
            code="quota_exceeded",
            headers={**headers, "Retry-After": retry_after_header(admission.retry_after_s)},
        )

    async def charge(self, tenant: str, tokens: int = 0) -> None:
        """Count one request and `tokens` embedded tokens against `tenant`'s quota, for
        work that is not a generation (RAG ingestion, search, collection creation,
        /v1/embeddings). Call it before the work, with the tokens it will embed (an
        estimate is fine, e.g. `EstimatingCounter().text`); raises `APIError` 429 (with
        Retry-After) when the tenant is over its quota, so the work is never started."""
        ticket = await self.admit(tenant, tokens, {})
        await self.release(ticket, tokens)

    @asynccontextmanager
    async def charged(self, tenant: str, tokens: int = 0) -> AsyncIterator[None]:
        """`charge`, holding one of the tenant's concurrent requests (`max_concurrent`)
        while the block runs: `async with core.charged(tenant, n): ...`."""
        ticket = await self.admit(tenant, tokens, {})
        try:
            yield
        finally:
            await self.release(ticket, tokens)
