"""Dataset uploads (``.npz``): streamed under a cap, opened without unpickling in a limited
child process. Whether they fit a model is checked when a job names both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.config import Settings
from app.core.deletion import Deletion
from app.core.errors import InvalidInput, NotFound
from app.core.ids import new_id
from app.core.inspection import check_dataset_fits, inspect_dataset
from app.core.inspector import Inspector
from app.core.quotas import Quotas
from app.core.storage import Storage, dataset_folder
from app.core.uploads import receive_within_quota
from app.datasets.repository import DatasetRepository
from app.datasets.tables import Dataset
from app.models_.tables import Model


class DatasetService:
    def __init__(
        self,
        *,
        session: Session,
        settings: Settings,
        storage: Storage,
        inspector: Inspector,
    ) -> None:
        self.repository = DatasetRepository(session)
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
    ) -> Dataset:
        staged = await receive_within_quota(
            session=self.repository.session,
            settings=self.settings,
            storage=self.storage,
            tenant_id=tenant_id,
            body=body,
            declared_length=declared_length,
            limit=self.settings.max_dataset_bytes,
            what="dataset upload",
        )
        try:
            facts = await self.inspector.run(
                filename,
                inspect_dataset,
                str(staged.path),
                self.settings.max_dataset_expanded_bytes,
                tenant_id=tenant_id,
                read=(staged.path,),
            )
            if "error" in facts:
                raise InvalidInput(f"dataset {filename}: {facts['error']}")
            await run_in_threadpool(
                Quotas(session=self.repository.session, settings=self.settings).check_expanded,
                tenant_id=tenant_id,
                expanded_bytes=facts["expanded_bytes"],
            )
        except BaseException:
            self.storage.discard(staged)
            raise
        dataset_id = new_id()
        storage_key = f"{dataset_folder(dataset_id)}/data.npz"
        await run_in_threadpool(self.storage.commit, staged, storage_key)
        dataset = Dataset(
            id=dataset_id,
            tenant_id=tenant_id,
            filename=filename,
            storage_key=storage_key,
            size_bytes=staged.size,
            expanded_bytes=facts["expanded_bytes"],
            sha256=staged.sha256,
            arrays=facts["arrays"],
        )
        return await run_in_threadpool(self.repository.add, dataset)

    def get(self, *, tenant_id: str, dataset_id: str) -> Dataset:
        """Another tenant's dataset is indistinguishable from a missing one."""
        return self.repository.owned(dataset_id, tenant_id)

    def delete(self, *, dataset: Dataset) -> None:
        """The row now, its file after commit; 409 while a queued or running job needs it
        (``app.core.deletion``). Finished jobs that used it keep their artifacts."""
        deletion = Deletion(session=self.repository.session, storage=self.storage)
        if not deletion.dataset(dataset.id):
            raise NotFound(f"dataset {dataset.id} not found")

    async def check_fits(
        self, *, dataset: Dataset, model: Model, role: str, fixed: dict[str, float] | None = None
    ) -> None:
        """The engine's own data checks, run now so a misfit is a 422, not a failed job;
        ``fixed`` inputs (``quantization.fixed_inputs``) may be left out of the data."""
        path = str(await run_in_threadpool(self.storage.local_file, dataset.storage_key))
        facts = await self.inspector.run(
            f"{role} dataset",
            check_dataset_fits,
            path,
            model.inputs,
            role,
            self.settings.max_dataset_expanded_bytes,
            fixed or {},
            tenant_id=dataset.tenant_id,
            read=(Path(path),),
        )
        if "error" in facts:
            raise InvalidInput(
                f"{role} dataset {dataset.id} does not fit model {model.id}: {facts['error']}"
            )
