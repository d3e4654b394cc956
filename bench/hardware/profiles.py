"""Hardware profiles: typed YAML files that say what a machine costs per hour and how fast it can go."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bench.config.validate import validate
from bench.config.yamlpos import line_for, load_yaml_with_lines
from bench.errors import UserInputError, did_you_mean

HARDWARE_ENV = "BENCH_HARDWARE_DIR"
HOURS_PER_YEAR = 8760
COST_TOLERANCE = 0.05  # cost_per_hour_usd may differ from what cost_basis implies by this fraction


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MatchRules(Strict):
    """What detect() must report for this profile to be picked automatically; every rule given must hold."""

    cpu_model: str | None = Field(None, description="regex searched in the CPU model, case-insensitive")
    arch: str | None = Field(None, description="regex matched against the whole arch, case-insensitive")
    min_logical_cores: int | None = Field(None, ge=1)
    max_logical_cores: int | None = Field(None, ge=1)
    min_ram_gb: float | None = Field(None, ge=0)
    max_ram_gb: float | None = Field(None, gt=0)
    gpu_name: str | None = Field(None, description="regex searched in each GPU's name; one must match")
    min_gpus: int | None = Field(None, ge=0)
    max_gpus: int | None = Field(None, ge=0)

    @field_validator("cpu_model", "arch", "gpu_name")
    @classmethod
    def _regex_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _ranges(self) -> MatchRules:
        for low, high in (("min_logical_cores", "max_logical_cores"), ("min_ram_gb", "max_ram_gb"),
                          ("min_gpus", "max_gpus")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} ({lo}) is above {high} ({hi})")
        return self

    def specificity(self) -> int:
        """How many rules are set: the more, the more specific the profile."""
        return sum(v is not None for v in self.model_dump().values())

    def matches(self, info: dict[str, Any]) -> bool:
        gpus = info.get("gpus") or []
        checks = [
            self.cpu_model is None or re.search(self.cpu_model, str(info.get("cpu_model", "")), re.I),
            self.arch is None or re.fullmatch(self.arch, str(info.get("arch", "")), re.I),
            self.min_logical_cores is None or (info.get("logical_cores") or 0) >= self.min_logical_cores,
            self.max_logical_cores is None or (info.get("logical_cores") or 0) <= self.max_logical_cores,
            self.min_ram_gb is None or (info.get("ram_gb") or 0) >= self.min_ram_gb,
            self.max_ram_gb is None or (info.get("ram_gb") or 0) <= self.max_ram_gb,
            self.gpu_name is None or any(re.search(self.gpu_name, str(g.get("name", "")), re.I) for g in gpus),
            self.min_gpus is None or len(gpus) >= self.min_gpus,
            self.max_gpus is None or len(gpus) <= self.max_gpus,
        ]
        return all(bool(c) for c in checks)


class CostBasis(Strict):
    """How cost_per_hour_usd was reached: a purchase spread over its working hours, or a cloud rate."""

    method: Literal["amortized", "cloud-hourly"]
    purchase_usd: float | None = Field(None, gt=0)
    years: float | None = Field(None, gt=0)
    utilization: float | None = Field(None, gt=0, le=1, description="share of the hours the machine does work")
    power_w: float | None = Field(None, ge=0, description="average draw at the wall while working")
    electricity_usd_per_kwh: float | None = Field(None, ge=0)
    hourly_usd: float | None = Field(None, gt=0)
    note: str = ""

    @model_validator(mode="after")
    def _complete(self) -> CostBasis:
        if self.method == "amortized":
            missing = [k for k in ("purchase_usd", "years", "utilization", "power_w", "electricity_usd_per_kwh")
                       if getattr(self, k) is None]
            if missing:
                raise ValueError(f"an amortized cost needs {', '.join(missing)}")
        elif self.hourly_usd is None:
            raise ValueError("a cloud-hourly cost needs hourly_usd")
        return self

    def implied_hourly_usd(self) -> float:
        """purchase / (years * 8760 * utilization) + power_w / 1000 * electricity, or the cloud rate."""
        if self.method == "cloud-hourly":
            return float(self.hourly_usd or 0.0)
        capital = self.purchase_usd / (self.years * HOURS_PER_YEAR * self.utilization)  # type: ignore[operator]
        energy = self.power_w / 1000 * self.electricity_usd_per_kwh  # type: ignore[operator]
        return capital + energy


class Source(Strict):
    what: str = Field(..., min_length=1, description="which figure this source backs")
    url: str = Field(..., pattern=r"^https?://")
    as_of: dt.date


class Profile(Strict):
    """One kind of machine: how to recognise it, what an hour of it costs, and its peak speeds."""

    id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9._-]*$")
    name: str
    description: str = ""
    locality: Literal["local", "on-prem", "cloud"]
    match: MatchRules | None = Field(None, description="absent: only chosen by --hardware, never detected")
    cost_basis: CostBasis | None = None
    # Declared after cost_basis so its validator sees it; computed from cost_basis when left out.
    cost_per_hour_usd: float | None = Field(None, ge=0, validate_default=True)
    memory_gb: float | None = Field(None, gt=0, description="memory the model weights live in (VRAM or unified)")
    memory_bandwidth_gbs: float | None = Field(None, gt=0, description="peak bandwidth of that memory, GB/s")
    peak_tflops_fp16: float | None = Field(None, gt=0, description="dense, no sparsity")
    peak_tflops_int8: float | None = Field(None, gt=0, description="dense TOPS, no sparsity")
    peak_tflops_fp32: float | None = Field(None, gt=0)
    power_w: float | None = Field(None, gt=0, description="rated peak draw (TDP/TBP) of the device")
    estimated: list[str] = Field([], description="fields whose figure is an estimate, not a published spec")
    sources: list[Source] = []

    @field_validator("cost_per_hour_usd")
    @classmethod
    def _cost_agrees(cls, v: float | None, info: ValidationInfo) -> float | None:
        basis: CostBasis | None = info.data.get("cost_basis")
        if basis is None:
            return v
        implied = basis.implied_hourly_usd()
        if v is None:
            return round(implied, 4)
        if implied > 0 and abs(v - implied) / implied > COST_TOLERANCE:
            how = ("purchase_usd / (years * 8760 * utilization) + power_w / 1000 * electricity_usd_per_kwh"
                   if basis.method == "amortized" else "hourly_usd")
            raise ValueError(f"{v} disagrees with cost_basis, which gives {implied:.4f} ({how}); "
                             f"they must agree within {COST_TOLERANCE:.0%}")
        return v

    @model_validator(mode="after")
    def _known_estimates(self) -> Profile:
        unknown = [name for name in self.estimated
                   if name not in Profile.model_fields and name not in CostBasis.model_fields]
        if unknown:
            raise ValueError(f"'estimated' names unknown fields: {', '.join(unknown)}")
        if self.cost_per_hour_usd is not None and not self.sources:
            raise ValueError("a profile with a cost needs 'sources' that back its figures")
        return self


# ---------------------------------------------------------------- loading

def default_dir() -> Path:
    """$BENCH_HARDWARE_DIR, else hardware/ at the repository root."""
    env = os.environ.get(HARDWARE_ENV)
    if env:
        return Path(env).expanduser()
    import bench

    return Path(bench.__file__).resolve().parent.parent / "hardware"


def load_profile_file(path: Path) -> Profile:
    """Load and validate one profile; every error names the file, the line and the field."""
    data, lines = load_yaml_with_lines(path)
    if not isinstance(data, dict):
        raise UserInputError("a hardware profile must be a YAML mapping (id, name, locality, ...)", file=str(path))
    profile = validate(Profile, data, lines, path)
    if profile.id != path.stem:
        raise UserInputError(f"id {profile.id!r} differs from the file name; name the file {profile.id}.yaml",
                             file=str(path), line=line_for(lines, ("id",)), field="id")
    return profile


def load_profiles(directory: str | Path | None = None) -> dict[str, Profile]:
    """Every profile in a folder's *.yaml / *.yml files, by id (default: hardware/ at the repo root)."""
    explicit = directory is not None or HARDWARE_ENV in os.environ
    folder = Path(directory).expanduser() if directory is not None else default_dir()
    if not folder.is_dir():
        if explicit:
            raise UserInputError("hardware profile folder not found", file=str(folder),
                                 hint=f"set {HARDWARE_ENV} to a folder of profile YAML files")
        return {}
    profiles: dict[str, Profile] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        profile = load_profile_file(path)
        if profile.id in profiles:
            raise UserInputError(f"duplicate profile id {profile.id!r}", file=str(path), field="id")
        profiles[profile.id] = profile
    return profiles


def get_profile(profile_id: str, directory: str | Path | None = None) -> Profile:
    """The profile with this id; an unknown id lists the known ones."""
    profiles = load_profiles(directory)
    if profile_id not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise UserInputError(f"unknown hardware profile {profile_id!r}; known: {known}", field="hardware",
                             hint=did_you_mean(profile_id, profiles))
    return profiles[profile_id]


def match_profile(info: dict[str, Any], profiles: dict[str, Profile] | None = None) -> Profile | None:
    """The most specific profile whose match rules all hold for this machine, or None."""
    if profiles is None:
        profiles = load_profiles()
    hits = [p for p in profiles.values() if p.match is not None and p.match.matches(info)]
    if not hits:
        return None
    return sorted(hits, key=lambda p: (-p.match.specificity(), p.id))[0]  # type: ignore[union-attr]


def current(profile_id: str | None = None, directory: str | Path | None = None
            ) -> tuple[dict[str, Any], Profile | None, str]:
    """Detect this machine and pick its profile: the one named by --hardware, else the best match."""
    from bench.hardware.detect import detect

    info = detect()
    if profile_id:
        profile = get_profile(profile_id, directory)
        note = f"{profile.id}: chosen by --hardware"
        if profile.match is not None and not profile.match.matches(info):
            note += " (it does not match the detected machine; its cost and peaks are used as given)"
        return info, profile, note
    matched = match_profile(info, load_profiles(directory))
    if matched is None:
        return info, None, "no profile matched this machine; cost is unknown (choose one with --hardware)"
    return info, matched, f"matched {matched.id}"
