"""Model uploads: stream to storage under a cap, check with the engine's importer in a limited
child process, and only then add the row; a refused upload leaves nothing behind."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.config import Settings
from app.core.errors import InvalidInput, NotFound
from app.core.ids import new_id
from app.core.inspection import Inspector, inspect_model
from app.core.storage import LocalStorage
from app.core.uploads import receive_within_quota
from app.models_.repository import ModelRepository
from app.models_.tables import Model


class ModelService:
    def __init__(
        self,
        *,
        session: Session,
        settings: Settings,
        storage: LocalStorage,
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
    ) -> Model:
        staged = await receive_within_quota(
            session=self.repository.session,
            settings=self.settings,
            storage=self.storage,
            tenant_id=tenant_id,
            body=body,
            declared_length=declared_length,
            limit=self.settings.max_model_bytes,
            what="model upload",
        )
        model_id = new_id()
        converted = staged.path.parent / "converted.onnx"
        try:
            facts = await self.inspector.run(
                filename,
                inspect_model,
                str(staged.path),
                str(converted),
                self.settings.max_tensor_elements,
            )
            if "error" in facts:
                cause = facts["error"].replace(staged.path.name, filename)  # name the user's file
                raise InvalidInput(f"not a model qaas can quantize: {cause}")
            original_key = f"models/{model_id}/original"
            self.storage.path(original_key).parent.mkdir(parents=True, exist_ok=True)
            storage_key = original_key
            if facts["converted_path"]:  # torch.export archives become ONNX once, here
                storage_key = f"models/{model_id}/model.onnx"
                converted.replace(self.storage.path(storage_key))
            self.storage.commit(staged, original_key)
        finally:
            self.storage.discard(staged)
        model = Model(
            id=model_id,
            tenant_id=tenant_id,
            filename=filename,
            storage_key=storage_key,
            size_bytes=staged.size,
            sha256=staged.sha256,
            source_format=facts["source_format"],
            opset=facts["opset"],
            inputs=facts["inputs"],
            notes=facts["notes"],
        )
        return await run_in_threadpool(self.repository.add, model)

    def get(self, *, tenant_id: str, model_id: str) -> Model:
        """Another tenant's model is indistinguishable from a missing one."""
        model = self.repository.get_for_tenant(model_id, tenant_id)
        if model is None:
            raise NotFound(f"model {model_id} not found")
        return model

    def list(self, *, tenant_id: str, limit: int = 100) -> list[Model]:
        return self.repository.list_for_tenant(tenant_id, limit)
