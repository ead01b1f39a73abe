"""Model uploads: stream to storage under a cap, check with the engine's importer in a limited
child process, and only then add the row; a refused upload leaves nothing behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.bundles import Bundle, store_bundle, unpack_bundle
from app.core.config import Settings
from app.core.deletion import Deletion
from app.core.errors import InvalidInput, NotFound
from app.core.ids import new_id
from app.core.inspection import inspect_model
from app.core.inspector import Inspector
from app.core.storage import StagedFile, Storage, model_folder
from app.core.uploads import receive_within_quota
from app.models_.repository import ModelRepository
from app.models_.tables import Model

EXTERNAL_DATA_HINT = (
    "a model with external-data files is uploaded as one uncompressed tar of the model and "
    "those files, with Content-Type: application/x-tar"
)


class ModelService:
    def __init__(
        self,
        *,
        session: Session,
        settings: Settings,
        storage: Storage,
        inspector: Inspector,
    ) -> None:
        self.repository = ModelRepository(session)
        self.settings = settings
        self.storage = storage
        self.inspector = inspector

    async def upload(
        self,
        *,
        tenant_id: str,
        filename: str,
        body: AsyncIterator[bytes],
        declared_length: int | None,
        bundle: bool = False,
    ) -> Model:
        """``bundle``: the body is an uncompressed tar of one ``.onnx`` model and its
        external-data files (``app.core.bundles``); otherwise the model file itself."""
        staged = await receive_within_quota(
            session=self.repository.session,
            settings=self.settings,
            storage=self.storage,
            tenant_id=tenant_id,
            body=body,
            declared_length=declared_length,
            limit=self.settings.max_model_bytes,
            what="model bundle" if bundle else "model upload",
        )
        model_id = new_id()
        folder = model_folder(model_id)
        converted = staged.path.parent / "converted.onnx"
        stored = False
        try:
            unpacked = None
            if bundle:
                unpacked = await run_in_threadpool(
                    unpack_bundle,
                    staged.path,
                    max_entries=self.settings.max_bundle_entries,
                    storage=self.storage,
                )
                model_file = StagedFile(
                    unpacked.model.path, unpacked.size_bytes, unpacked.model.sha256
                )
            else:
                model_file = staged
            facts = await self._inspect(
                filename, model_file, converted, bundle=bundle, tenant_id=tenant_id
            )
            if unpacked is not None:
                self._refuse_unreferenced(unpacked, facts["external_data"])
            original_key = f"{folder}/original"
            storage_key = original_key
            if facts["converted_path"]:  # torch.export archives become ONNX once, here
                storage_key = f"{folder}/model.onnx"
                await run_in_threadpool(self.storage.put_file, converted, storage_key)
            external = (
                await run_in_threadpool(store_bundle, self.storage, unpacked, folder)
                if unpacked
                else []
            )
            await run_in_threadpool(self.storage.commit, model_file, original_key)
            stored = True
        finally:
            self.storage.discard(staged)
            if not stored:  # a half-stored model (say the disk filled up) is no model
                self.storage.delete_tree(folder)
        model = Model(
            id=model_id,
            tenant_id=tenant_id,
            filename=filename,
            storage_key=storage_key,
            size_bytes=model_file.size,
            sha256=model_file.sha256,
            source_format=facts["source_format"],
            opset=facts["opset"],
            inputs=facts["inputs"],
            notes=facts["notes"],
            external_data=external,
        )
        return await run_in_threadpool(self.repository.add, model)

    async def _inspect(
        self,
        filename: str,
        model_file: StagedFile,
        converted: Path,
        *,
        bundle: bool,
        tenant_id: str,
    ) -> dict[str, Any]:
        facts = await self.inspector.run(
            filename,
            inspect_model,
            str(model_file.path),
            str(converted),
            self.settings.max_tensor_elements,
            bundle,
            tenant_id=tenant_id,
            read=(model_file.path.parent,),
            write=(converted.parent,),
        )
        if "error" in facts:
            cause = facts["error"].replace(model_file.path.name, filename)  # the user's name
            if not bundle and "external data" in cause:
                cause += f" ({EXTERNAL_DATA_HINT})"
            raise InvalidInput(f"not a model qaas can quantize: {cause}")
        return facts

    @staticmethod
    def _refuse_unreferenced(unpacked: Bundle, locations: list[str]) -> None:
        referenced = {str(PurePosixPath(location)) for location in locations}
        extra = sorted(f.name for f in unpacked.external_data if f.name not in referenced)
        if extra:
            raise InvalidInput(
                f"bundle file(s) {', '.join(extra)} hold no data the model refers to; its "
                f"initializers name {', '.join(sorted(referenced)) or 'no external data'}"
            )

    def get(self, *, tenant_id: str, model_id: str) -> Model:
        """Another tenant's model is indistinguishable from a missing one."""
        return self.repository.owned(model_id, tenant_id)

    def delete(self, *, model: Model) -> None:
        """The row now, its files after commit; 409 while a queued or running job needs it
        (``app.core.deletion``). Finished jobs made from it keep their artifacts."""
        if not Deletion(session=self.repository.session, storage=self.storage).model(model.id):
            raise NotFound(f"model {model.id} not found")
