from app.jobs.schemas import Artifact

__all__ = ["Artifact"]
