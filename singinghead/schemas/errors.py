"""Project exceptions: every message names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class SingingHeadError(Exception):
    """Base class for errors a lab operator can act on."""


class InputError(SingingHeadError):
    """A raw input (video, audio, manifest, photo) is unusable."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # crosses process boundaries (Dask workers → flow) intact
        return type(self), (self.path, self.problem)


class OutputError(InputError):
    """An output cannot be written (full disk, quota, read-only or forbidden location)."""


class ManifestError(SingingHeadError):
    """A session manifest has one or more problems; each is reported on its own line."""

    def __init__(self, manifest_path: str | Path, problems: list[str]):
        self.manifest_path = str(manifest_path)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.manifest_path}: {len(self.problems)} problem(s)\n{lines}")

    def __reduce__(self):
        return type(self), (self.manifest_path, self.problems)


class AssetError(SingingHeadError):
    """A model asset (FLAME, wav2vec 2.0, separation weights...) is missing or invalid."""


class ReleaseError(SingingHeadError):
    """A release folder (or a request to build one) is inconsistent."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.problem)
