"""The pydantic models of :mod:`featbench.core.manifest` (imported only when a model is read)."""

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.types import StringConstraints

from featbench.core.modellimits import (AU_PATTERN, GROUP_PATTERN, MAX_AUS, MAX_FOLDS, MAX_GROUPS,
                                        MAX_MEMBERS, MAX_RANK, MAX_SIDE, MIN_SIDE, NAME_PATTERN)

AU = Annotated[str, StringConstraints(pattern=AU_PATTERN)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Text = Annotated[str, StringConstraints(max_length=20_000)]
Side = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)]
Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Region = Literal["full", "upper", "middle", "lower"]
Scalar = Union[bool, int, float, str, None]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class Fold(Strict):
    name: Name
    thresholds: dict[AU, float]


class Alignment(Strict):
    size: Optional[Side] = None
    template_version: Optional[Annotated[int, Field(ge=0, le=1000)]] = None
    format_version: Optional[Annotated[int, Field(ge=0, le=1000)]] = None
    stable_points: Optional[list[Annotated[int, Field(ge=0, le=200)]]] = Field(None, max_length=200)
    landmarks: Optional[Text] = None
    interpolation: Optional[Text] = None
    compression: Optional[Text] = None


class Preprocessing(Strict):
    model: Text = ""
    layer: Optional[Text] = None
    input_size: Optional[Side] = None
    regions: dict[AU, Region] = {}
    mean: Optional[list[float]] = Field(None, max_length=4)
    std: Optional[list[float]] = Field(None, max_length=4)
    pixel_scale: Optional[float] = None
    alignment: Alignment = Alignment()
    calibrate: Optional[Literal["none", "median", "neutral"]] = None


class TrainingData(Strict):
    dataset: Name
    synthetic: bool


class Group(Strict):
    file: Optional[Name] = None
    prefix: Optional[Annotated[str, StringConstraints(max_length=400)]] = None
    sha256: Hex
    data_sha256: Optional[Hex] = None


class Carried(Strict):
    prefix: Annotated[str, StringConstraints(pattern=r"^carried\.\d{1,4}/$")]
    name: Name


class Manifest(Strict):
    format: Literal["featbench-model"]
    format_version: int
    featbench_version: Text
    created: Text
    run: Name
    kind: Name
    task: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,40}$")] = "occurrence"
    aus: list[AU] = Field(min_length=1, max_length=MAX_AUS)
    folds: list[Fold] = Field(max_length=MAX_FOLDS)
    weights: Text
    preprocessing: Preprocessing
    training_data: TrainingData
    settings: dict[str, Any] = {}
    tensors: dict[Annotated[str, StringConstraints(pattern=GROUP_PATTERN)], Group] = Field(
        max_length=MAX_GROUPS)
    members: Optional[list[dict[str, Any]]] = Field(None, max_length=MAX_MEMBERS)
    carried: Optional[dict[Annotated[str, StringConstraints(max_length=2000)], Carried]] = None
    exported: Optional[dict[str, Scalar]] = None

    @field_validator("aus")
    @classmethod
    def _unique(cls, aus):
        if len(set(aus)) != len(aus):
            raise ValueError(f"an AU is listed twice ({', '.join(aus)})")
        return aus

    @model_validator(mode="after")
    def _consistent(self):
        aus = set(self.aus)
        for i, fold in enumerate(self.folds):
            extra = sorted(set(fold.thresholds) - aus)
            if extra:
                raise ValueError(f"folds.{i}.thresholds: {extra[0]} is not one of the run's AUs")
        extra = sorted(set(self.preprocessing.regions) - aus)
        if extra:
            raise ValueError(f"preprocessing.regions: {extra[0]} is not one of the run's AUs")
        return self


class MemberRef(Strict):
    run: Name


class HeaderEntry(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    dtype: str
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=MAX_RANK)
    data_offsets: list[Annotated[int, Field(ge=0)]] = Field(min_length=2, max_length=2)
