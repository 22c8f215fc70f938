"""``POST …/models/{model}:import``: fill an UPLOADING model from an S3 folder, in place.

Body ``{"awsS3Source": {"s3Uri": "s3://BUCKET/PREFIX"}}`` (the shape of Fireworks' own
import verb). Every object under the prefix is hashed by a streamed read and copied
server-side into the store under its sha256, then declared and landed as the model's files;
``validateUpload`` makes the model READY as after any upload. The answer is a finished
``google.longrunning.Operation`` whose ``response`` is the model.

The server reads with its own S3 credentials, so an API key must not be able to point it at
any bucket those credentials reach (the store itself holds every account's blobs): only
folders under one of the operator's ``s3_import_prefixes`` are accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from weightport.catalog import registry, uploads
from weightport.errors import FailedPrecondition, InvalidArgument, PayloadTooLarge
from weightport.server.context import context_of
from weightport.server.envelopes import json_response
from weightport.server.fireworks_resources import model_json
from weightport.server.requests import json_body
from weightport.services.gc import pin_stored
from weightport.storage.base import BlobInfo, BlobStore
from weightport.storage.factory import s3_connection
from weightport.storage.s3 import S3Location
from weightport.storage.s3.folder import S3Folder


def allowed_source(uri: str, allowed: str) -> S3Location:
    """The folder ``uri`` names, if it lies under one of the comma-separated ``allowed``
    prefixes; else :class:`InvalidArgument` (no prefixes: imports are off)."""
    source = S3Location.parse(uri, what="awsS3Source.s3Uri")
    prefixes = [S3Location.parse(p, what="s3_import_prefixes") for p in allowed.split(",") if p]
    if not prefixes:
        raise FailedPrecondition(
            "imports from S3 are not enabled on this server (s3_import_prefixes is empty)"
        )
    for prefix in prefixes:
        if source.bucket == prefix.bucket and source.prefix.startswith(prefix.prefix):
            return source
    raise InvalidArgument(
        f"{source} is not under an import prefix this server allows", param="awsS3Source"
    )


async def import_model(request: web.Request, account: str, model_id: str) -> web.Response:
    """Import an S3 folder into an UPLOADING model (see the module docstring)."""
    ctx = context_of(request)
    body = await json_body(request)
    source = body.get("awsS3Source")
    uri = source.get("s3Uri") if isinstance(source, dict) else None
    if not isinstance(uri, str):
        raise InvalidArgument("awsS3Source.s3Uri (s3://BUCKET/PREFIX) is required")
    location = allowed_source(uri, ctx.settings.s3_import_prefixes)
    await ctx.catalog.run(lambda s: _require_uploading(s, account, model_id))
    folder = S3Folder.open(str(location), s3_connection(ctx.settings))
    sizes = await asyncio.to_thread(folder.files)
    limit = ctx.settings.max_upload_size
    too_big = sorted(path for path, size in sizes.items() if size > limit)
    if too_big:
        raise PayloadTooLarge(f"{too_big[0]!r} is larger than the {limit}-byte upload limit")
    checked = uploads.parse_sizes(sizes)
    declared = await ctx.catalog.run(
        lambda s: [
            (f.path, f.generation)
            for f in uploads.declare_files(s, account, model_id, checked)
            if f.sha256 is None
        ]
    )
    for path, generation in declared:
        info = await asyncio.to_thread(folder.import_file, ctx.store, path)
        await ctx.catalog.run(_land(ctx.store, account, model_id, path, generation, info))
    model = await ctx.catalog.run(lambda s: model_json(registry.get_model(s, account, model_id)))
    operation: dict[str, Any] = {
        "name": f"{registry.resource_name(account, model_id)}/operations/import",
        "done": True,
        "response": model,
    }
    return json_response(operation)


def _land(
    store: BlobStore, account: str, model_id: str, path: str, generation: int, info: BlobInfo
) -> Callable[[Session], None]:
    def run(session: Session) -> None:
        # The bytes may equal a blob garbage collection is deleting this instant.
        pin_stored(session, store, [info.key])
        uploads.land_file(session, account, model_id, path, generation, info.key, info.size)

    return run


def _require_uploading(session: Session, account: str, model_id: str) -> None:
    model = registry.get_model(session, account, model_id)
    if model.state != registry.UPLOADING:
        raise FailedPrecondition(
            f'model "{registry.resource_name(account, model_id)}" is {model.state}; '
            "import into a new model"
        )
