"""Tenants: who may call the service, with which API key and defense parameters."""

from service.tenants.domain import (
    CorruptTenant,
    InvalidTenantName,
    StoreUnavailable,
    Tenant,
    TenantError,
    TenantExists,
    TenantNotFound,
    TenantView,
)
from service.tenants.keys import (
    PresentedKey,
    generate_api_key,
    hash_api_key,
    parse_key_id,
    verify,
)
from service.tenants.store import TenantStore

__all__ = [
    "CorruptTenant",
    "InvalidTenantName",
    "PresentedKey",
    "StoreUnavailable",
    "Tenant",
    "TenantError",
    "TenantExists",
    "TenantNotFound",
    "TenantStore",
    "TenantView",
    "generate_api_key",
    "hash_api_key",
    "parse_key_id",
    "verify",
]
