"""What an invocation's stored bytes cost its tenant's quota, at the three times they are
charged: admission (the request, and room for its record), its artifacts (before they
are stored or their upload URLs issued: ``StorageQuota.reserve_artifacts``), and its end,
here: what the run left is measured, its artifacts checked against what was reported,
and its logs and result kept only if they fit."""

from __future__ import annotations

from gateway.dispatch.results import fail
from gateway.errors import StorageQuotaExceeded
from gateway.models import InvocationRecord, Reason
from gateway.storage.records import InvocationStore
from gateway.tenants.quota import StorageQuota

# Charged at admission beside the request: the record and the index entries, which an
# invocation keeps whatever happens (its final size is measured at its end).
RECORD_ALLOWANCE = 4096
ARTIFACTS = "artifacts/"


def admission_charge(request_body: bytes) -> int:
    return len(request_body) + RECORD_ALLOWANCE


async def settle(record: InvocationRecord, records: InvocationStore, quota: StorageQuota,
                 *, workers_upload: bool, charged: int) -> int | None:
    """Before the final record is stored: keep only what may be kept, and return every
    byte the invocation then keeps (its final usage entry). Logs and result past the
    quota are dropped (reason StorageQuota); an artifact whose stored bytes are not the
    ones reported, or one not reported at all, is deleted (reason ArtifactLimit).

    None, and nothing read or written, for the usual small call: no artifacts reported
    and a final record within what admission ``charged``. Its admission entry (with any
    artifact reservation, which bounds what a worker could upload: each URL signs its
    Content-Length) already counts every byte it keeps."""
    if not record.artifacts and _bytes(records, record) <= charged:
        return None
    if workers_upload:  # what they stored is listed, not taken on their word
        kept = await records.kept(record)
        await _check_artifacts(record, kept, records)
    else:  # the gateway stored the artifacts itself: it knows their sizes
        kept = {ARTIFACTS + a.name: a.size for a in record.artifacts}
    outputs = _bytes(records, record) - _bytes(records, _without_outputs(record))
    if outputs > 0:
        try:
            await quota.reserve(record.tenant, outputs)
        except StorageQuotaExceeded as e:
            _drop_outputs(record)
            if record.reason is None:
                fail(record, Reason.StorageQuota,
                     f"the output ({outputs} bytes of logs and result) was not stored: "
                     f"{e.message}")
    final = records.final_sizes(record)
    return sum(size for name, size in kept.items() if name not in final) + \
        sum(final.values())


async def _check_artifacts(record: InvocationRecord, kept: dict[str, int],
                           records: InvocationStore) -> None:
    """A worker that uploads its artifacts itself is not trusted to report them truly
    (each upload URL takes only the size it asked for; the report could still claim
    another size, or leave an upload out)."""
    reported = {a.name: a for a in record.artifacts}
    wrong = [a.name for a in record.artifacts if kept.get(ARTIFACTS + a.name) != a.size]
    stray = [name[len(ARTIFACTS):] for name in kept
             if name.startswith(ARTIFACTS) and name[len(ARTIFACTS):] not in reported]
    if not (wrong or stray):
        return
    await records.drop_artifacts(record, wrong + stray)
    for name in wrong + stray:
        kept.pop(ARTIFACTS + name, None)
    record.artifacts = [a for a in record.artifacts if a.name not in wrong]
    if wrong and record.reason is None:
        fail(record, Reason.ArtifactLimit,
             f"artifact {wrong[0]!r} was not stored as reported; it was not kept")


def _bytes(records: InvocationStore, record: InvocationRecord) -> int:
    return sum(records.final_sizes(record).values())


def _without_outputs(record: InvocationRecord) -> InvocationRecord:
    copy = record.model_copy()
    _drop_outputs(copy)
    return copy


def _drop_outputs(record: InvocationRecord) -> None:
    record.stdout, record.stderr = "", ""
    record.result = None
