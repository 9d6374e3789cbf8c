"""Sign-in (OAuth2 password and refresh-token grants), users and roles, integrator API keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from fastapi import APIRouter, Depends, Form, Request, Response
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from shuidian_gateway.adapters.identity import Identity
from shuidian_gateway.api.auth import Authenticated, client_address, require, utcnow
from shuidian_gateway.api.conventions import (
    ERRORS,
    NO_NUL,
    Cursor,
    IfMatch,
    Limit,
    Text,
    decode_cursor,
    page,
    version_etag,
    version_of,
)
from shuidian_gateway.api.deps import container_of
from shuidian_gateway.domain.policy import GRANTABLE_SCOPES, Action, Principal, Role
from shuidian_gateway.errors import InvalidRequest
from shuidian_shared.messages import Identifier

router = APIRouter(prefix="/v1", responses=ERRORS)


async def _identity(request: Request) -> Identity:
    identity = container_of(request).identity
    return identity


Ids = Annotated[Identity, Depends(_identity)]
Admin = Annotated[Principal, Depends(require(Action.USERS_MANAGE))]
Username = Annotated[str, Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]
Password = Annotated[Text, Field(min_length=10, max_length=256, description="at least 10 characters")]
EstateId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^(\*|[A-Za-z0-9_.:-]+)$")]


class TokenOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJIUzI1NiIs…",
                    "token_type": "bearer",
                    "expires_in": 900,
                    "refresh_token": "Qm9i…",
                }
            ]
        }
    )

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="seconds the access token stays valid")
    refresh_token: str = Field(description="one-time use; the answer to a refresh carries the next one")


@router.post(
    "/auth/token",
    response_model=TokenOut,
    tags=["auth"],
    summary="登录 / 刷新 · Sign in (OAuth2 password grant) or refresh (refresh_token grant)",
    description="Form-encoded as in OAuth2 (RFC 6749 §4.3 and §6). Refresh tokens rotate: each is good "
    "once, and presenting a spent one revokes every token of that sign-in. After repeated failures a "
    "user's next attempt must wait a doubling delay (at most a minute by default): earlier attempts are a 429 "
    "with Retry-After. Too many attempts from one address in a minute are a 429 too.",
)
async def token(
    request: Request,
    identity: Ids,
    grant_type: Annotated[Literal["password", "refresh_token"], Form()],
    username: Annotated[str | None, Form(max_length=64, pattern=NO_NUL)] = None,
    password: Annotated[str | None, Form(max_length=256, pattern=NO_NUL)] = None,
    refresh_token: Annotated[str | None, Form(max_length=200, pattern=NO_NUL)] = None,
) -> TokenOut:
    settings = container_of(request).settings
    await identity.count_attempt(client_address(request, settings.trusted_proxy_networks), utcnow())
    if grant_type == "password":
        if not username or not password:
            raise InvalidRequest("username and password are required for grant_type=password")
        request.state.principal_name = f"login:{username}"
        pair = await identity.login(username, password, utcnow())
    else:
        if not refresh_token:
            raise InvalidRequest("refresh_token is required for grant_type=refresh_token")
        request.state.principal_name = "refresh"
        pair = await identity.refresh(refresh_token, utcnow())
    return TokenOut(access_token=pair.access_token, expires_in=pair.expires_in, refresh_token=pair.refresh_token)


class RevokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: str = Field(min_length=1, max_length=200)


@router.post(
    "/auth/revoke", status_code=204, tags=["auth"], summary="退出登录 · Sign out (revoke the refresh token's family)"
)
async def revoke(body: RevokeIn, identity: Ids) -> None:
    await identity.revoke(body.refresh_token)


class WhoAmI(BaseModel):
    kind: str
    subject: str
    role: Role
    estates: list[str]
    tenant_id: str | None
    actions: list[str]


@router.get(
    "/auth/me", response_model=WhoAmI, tags=["auth"], summary="我是谁 · The calling principal and what it may do"
)
async def whoami(principal: Authenticated) -> WhoAmI:
    return WhoAmI(
        kind=principal.kind,
        subject=principal.subject,
        role=principal.role,
        estates=sorted(principal.estates),
        tenant_id=principal.tenant_id,
        actions=sorted(a.value for a in principal.actions),
    )


# -- users -------------------------------------------------------------------------------------
StaffRole = Literal["system_admin", "estate_manager", "cashier", "maintenance", "finance"]


class _NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Username
    password: Password
    display_name: Text = Field(default="", max_length=100)


class UserIn(_NewUser):
    """Staff and tenant users in one shape, the rule between `role`, `estates` and `tenant_id` stated
    in the schema (if/then/else) rather than as a union whose branches only `role` tells apart."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "username": "li.manager",
                    "password": "correct horse battery",
                    "role": "estate_manager",
                    "estates": ["E1"],
                    "display_name": "李经理",
                },
                {
                    "username": "13800000000",
                    "password": "correct horse battery",
                    "role": "tenant",
                    "tenant_id": "T-0001",
                },
            ],
            "if": {"properties": {"role": {"const": "tenant"}}},
            "then": {
                "required": ["tenant_id"],
                "properties": {"tenant_id": {"type": "string"}, "estates": {"maxItems": 0}},
            },
            "else": {"properties": {"tenant_id": {"type": "null"}}},
        },
    )

    role: StaffRole | Literal["tenant"]
    estates: list[EstateId] = Field(
        default_factory=list, max_length=100, description='staff: estate ids, ["*"] for all; none for a tenant'
    )
    tenant_id: Identifier | None = Field(
        default=None, description="tenant users only (and required for them): billing's tenant id"
    )

    @model_validator(mode="after")
    def _fits_the_role(self) -> UserIn:
        if self.role == "tenant":
            if self.tenant_id is None:
                raise ValueError("a tenant user needs tenant_id")
            if self.estates:
                raise ValueError("a tenant user has no estates")
        elif self.tenant_id is not None:
            raise ValueError("only a tenant user has a tenant_id")
        return self


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: Password | None = None
    role: StaffRole | None = Field(default=None, description="staff users only; a tenant user stays a tenant")
    estates: list[EstateId] | None = Field(default=None, max_length=100)
    display_name: Text | None = Field(default=None, max_length=100)
    active: bool | None = None


class UserOut(BaseModel):
    user_id: uuid.UUID
    username: str
    role: Role
    estates: list[str]
    tenant_id: str | None
    display_name: str
    active: bool
    version: int
    created_at: datetime
    updated_at: datetime


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None


@router.post("/users", status_code=201, response_model=UserOut, tags=["users"], summary="新建用户 · Create a user")
async def create_user(body: UserIn, identity: Ids, _: Admin, response: Response) -> dict[str, Any]:
    user = await identity.create_user(
        body.username, body.password, Role(body.role), list(body.estates), body.tenant_id, body.display_name
    )
    response.headers["ETag"] = version_etag(user["version"])
    return user


@router.get("/users", response_model=UserPage, tags=["users"], summary="用户列表 · Users")
async def users(
    identity: Ids, _: Admin, limit: Limit = 50, cursor: Cursor = None, role: Role | None = None
) -> dict[str, Any]:
    offset = decode_cursor(cursor)
    rows = await identity.users(role.value if role else None, limit + 1, offset)
    return page(rows, offset, limit)


@router.get("/users/{user_id}", response_model=UserOut, tags=["users"], summary="用户 · A user (with ETag)")
async def user(user_id: uuid.UUID, identity: Ids, _: Admin, response: Response) -> dict[str, Any]:
    found = await identity.user(user_id)
    response.headers["ETag"] = version_etag(found["version"])
    return found


@router.patch(
    "/users/{user_id}",
    response_model=UserOut,
    tags=["users"],
    summary="修改用户 · Change role, estates, password or deactivate (If-Match)",
    description="A new password, a new role or deactivation revokes the user's refresh tokens.",
)
async def patch_user(
    user_id: uuid.UUID, body: UserPatch, identity: Ids, _: Admin, response: Response, if_match: IfMatch = None
) -> dict[str, Any]:
    changes = body.model_dump(exclude_none=True)
    updated = await identity.update_user(user_id, version_of(if_match), changes)
    response.headers["ETag"] = version_etag(updated["version"])
    return updated


# -- API keys ----------------------------------------------------------------------------------
class ApiKeyIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "city housing bureau", "scopes": ["premises:read", "accounts:read"], "estates": ["*"]}
            ]
        },
    )

    name: Text = Field(min_length=1, max_length=100)
    scopes: list[Annotated[Action, WithJsonSchema({"type": "string", "enum": sorted(GRANTABLE_SCOPES)})]] = Field(
        min_length=1, max_length=len(Action), description="actions the key may perform (any but users:manage)"
    )
    estates: list[EstateId] = Field(default_factory=lambda: ["*"], max_length=100)

    @model_validator(mode="after")
    def _grantable(self) -> Self:
        if not set(self.scopes) <= GRANTABLE_SCOPES:
            raise ValueError("users:manage cannot be granted to an API key")
        return self


class ApiKeyOut(BaseModel):
    key_id: uuid.UUID
    prefix: str = Field(description="public part of the key, shown in lists")
    name: str
    scopes: list[str]
    estates: list[str]
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="the key itself; shown only this once")


class ApiKeyPage(BaseModel):
    items: list[ApiKeyOut]
    next_cursor: str | None


@router.post(
    "/api-keys",
    status_code=201,
    response_model=ApiKeyCreated,
    tags=["api keys"],
    summary="新建 API 密钥 · Create an integrator API key",
)
async def create_api_key(body: ApiKeyIn, identity: Ids, principal: Admin) -> dict[str, Any]:
    key, row = await identity.create_api_key(body.name, list(body.scopes), list(body.estates), principal.name)
    return {**row, "key": key}


@router.get("/api-keys", response_model=ApiKeyPage, tags=["api keys"], summary="API 密钥 · API keys (prefix only)")
async def api_keys(identity: Ids, _: Admin, limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
    offset = decode_cursor(cursor)
    return page(await identity.api_keys(limit + 1, offset), offset, limit)


@router.delete(
    "/api-keys/{key_id}", response_model=ApiKeyOut, tags=["api keys"], summary="吊销 · Revoke an API key (immediate)"
)
async def revoke_api_key(key_id: uuid.UUID, identity: Ids, _: Admin) -> dict[str, Any]:
    return await identity.revoke_api_key(key_id)
