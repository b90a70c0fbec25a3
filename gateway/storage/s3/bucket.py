"""The bucket itself: proving we can use our prefix (readiness), creating the bucket
where asked, and the lifecycle rule that expires our objects behind the janitor."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

from botocore.exceptions import ClientError

from gateway.storage.s3.connection import S3Connection, error_code

log = logging.getLogger("jobgate.storage.s3")

_LIFECYCLE_RULE_PREFIX = "jobgate-expiry"

# What start() found for the lifecycle rule (tests and operators read it).
LifecycleState = Literal["installed", "unchanged", "refused"]


async def check(s3: S3Connection) -> None:
    """A one-key listing of our prefix, not HeadBucket: HeadBucket needs
    s3:ListBucket on the whole bucket, which a policy limited to our prefix (see
    docs/storage.md) does not grant. Just as cheap, and it proves what we use."""
    with s3.errors():
        await s3.client.list_objects_v2(
            Bucket=s3.bucket, Prefix=s3.full_prefix(""), MaxKeys=1)


async def create(s3: S3Connection) -> None:
    params: dict[str, Any] = {"Bucket": s3.bucket}
    if s3.settings.s3.region != "us-east-1":
        # us-east-1 is the one region that refuses an explicit location constraint.
        params["CreateBucketConfiguration"] = {
            "LocationConstraint": s3.settings.s3.region}
    try:
        with s3.errors():
            await s3.client.create_bucket(**params)
        log.info("created bucket %s", s3.bucket)
    except ClientError as e:
        code = error_code(e)
        if code == "BucketAlreadyExists":
            # AWS: someone else's bucket. Some SeaweedFS versions also say it for our
            # own: if we can list our prefix there, it is ours to use.
            await check(s3)
        elif code != "BucketAlreadyOwnedByYou":
            raise


async def install_lifecycle(s3: S3Connection) -> LifecycleState:
    """Expire our objects ``max_ttl_s`` (in whole days, rounded up) after their last
    write. Objects are rewritten at most until their invocation finishes and expire
    at most max_ttl_s after creation, so the rule never runs ahead of the janitor.
    Other rules in the bucket are kept: we read, merge ours by ID, and write back."""
    days = max(1, math.ceil(s3.settings.max_ttl_s / 86400))
    prefix = f"{s3.root}/" if s3.root else ""
    rule = {"ID": f"{_LIFECYCLE_RULE_PREFIX}-{s3.root or 'bucket'}"[:255],
            "Status": "Enabled", "Filter": {"Prefix": prefix},
            "Expiration": {"Days": days}}
    # Transport failures propagate (the store is down: fail the start); a ClientError
    # is the server refusing lifecycle rules (unsupported, AccessDenied, ...).
    with s3.errors():
        try:
            rules = await _lifecycle_rules(s3)
            if rule in rules:
                return "unchanged"
            rules = [r for r in rules if r.get("ID") != rule["ID"]] + [rule]
            await s3.client.put_bucket_lifecycle_configuration(
                Bucket=s3.bucket, LifecycleConfiguration={"Rules": rules})
        except ClientError as e:
            log.warning(
                "bucket %s refused the lifecycle rule (%s): the janitor alone "
                "enforces TTLs; what it misses (e.g. while no gateway runs) stays "
                "until deleted", s3.bucket, e.response.get("Error", {}).get("Code", e))
            return "refused"
    log.info("lifecycle rule %s: objects under %r expire after %d day(s)",
             rule["ID"], prefix, days)
    return "installed"


async def _lifecycle_rules(s3: S3Connection) -> list[dict[str, Any]]:
    try:
        current = await s3.client.get_bucket_lifecycle_configuration(Bucket=s3.bucket)
    except ClientError as e:
        if error_code(e) == "NoSuchLifecycleConfiguration":
            return []
        raise
    return list(current.get("Rules", []))
