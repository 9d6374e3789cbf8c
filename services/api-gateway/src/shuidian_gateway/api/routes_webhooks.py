"""Webhook subscriptions: create, list, read, change and delete (delivery: shuidian_gateway.adapters.webhooks)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from shuidian_gateway.adapters.webhooks import Event, Webhooks
from shuidian_gateway.api.auth import require
from shuidian_gateway.api.conventions import (
    ERRORS,
    Cursor,
    IfMatch,
    Limit,
    decode_cursor,
    page,
    version_etag,
    version_of,
)
from shuidian_gateway.api.deps import container_of
from shuidian_gateway.domain.policy import Action, Principal
from shuidian_gateway.errors import Forbidden

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ERRORS)


async def _webhooks(request: Request) -> Webhooks:
    hooks = container_of(request).webhooks
    return hooks


Hooks = Annotated[Webhooks, Depends(_webhooks)]
Manager = Annotated[Principal, Depends(require(Action.WEBHOOKS_MANAGE))]


def _owner(principal: Principal) -> str | None:
    """System administrators see every subscription; an integrator only its own."""
    if not principal.all_estates:
        # Events carry meter and account ids, not estates: estate-scoped keys get no firehose.
        raise Forbidden("webhooks need an all-estates key / 需全部小区权限")
    return None if principal.role.value == "system_admin" else principal.name


class WebhookIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "https://bureau.example/hooks/shuidian", "events": ["balance", "alarm"]}]
        },
    )

    url: AnyHttpUrl
    events: list[Event] = Field(min_length=1, max_length=4)


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl | None = None
    events: list[Event] | None = Field(default=None, min_length=1, max_length=4)
    active: bool | None = None


class WebhookOut(BaseModel):
    webhook_id: uuid.UUID
    owner: str
    url: str
    events: list[str]
    active: bool
    version: int
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="signing secret; shown only this once")


class WebhookPage(BaseModel):
    items: list[WebhookOut]
    next_cursor: str | None


@router.post("", status_code=201, response_model=WebhookCreated, summary="订阅 · Subscribe a URL to events")
async def create(body: WebhookIn, hooks: Hooks, principal: Manager, response: Response) -> Any:
    _owner(principal)
    await hooks.check_url(str(body.url))
    created = await hooks.create(principal.name, str(body.url), sorted(set(body.events)))
    response.headers["ETag"] = version_etag(created["version"])
    return created


@router.get("", response_model=WebhookPage, summary="订阅列表 · My webhook subscriptions")
async def list_hooks(hooks: Hooks, principal: Manager, limit: Limit = 50, cursor: Cursor = None) -> Any:
    offset = decode_cursor(cursor)
    return page(await hooks.listing(_owner(principal), limit + 1, offset), offset, limit)


@router.get("/{webhook_id}", response_model=WebhookOut, summary="订阅 · A webhook subscription (ETag)")
async def get_hook(webhook_id: uuid.UUID, hooks: Hooks, principal: Manager, response: Response) -> Any:
    found = await hooks.get(_owner(principal), webhook_id)
    response.headers["ETag"] = version_etag(found["version"])
    return found


@router.patch("/{webhook_id}", response_model=WebhookOut, summary="修改订阅 · Change a subscription (If-Match)")
async def patch_hook(
    webhook_id: uuid.UUID,
    body: WebhookPatch,
    hooks: Hooks,
    principal: Manager,
    response: Response,
    if_match: IfMatch = None,
) -> Any:
    changes = body.model_dump(exclude_none=True, mode="json")
    if "url" in changes:
        await hooks.check_url(changes["url"])
    updated = await hooks.update(_owner(principal), webhook_id, version_of(if_match), changes)
    response.headers["ETag"] = version_etag(updated["version"])
    return updated


@router.delete("/{webhook_id}", status_code=204, summary="取消订阅 · Delete a subscription")
async def delete_hook(webhook_id: uuid.UUID, hooks: Hooks, principal: Manager) -> None:
    await hooks.delete(_owner(principal), webhook_id)
