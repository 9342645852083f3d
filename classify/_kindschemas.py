"""The pydantic models of the run kinds' manifest settings (:mod:`classify.modelcheck`; imported
only when a model is checked)."""

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field
from pydantic.types import StringConstraints

from featbench.core.modellimits import (AU_PATTERN, GROUP_PATTERN, MAX_AUS, MAX_DIMS,
                                        MAX_HIDDEN, MAX_SIDE, MIN_SIDE, NAME_PATTERN)

#: a fitted attribute's name (scikit-learn's convention: ends with "_", never starts with one)
FITTED_PATTERN = r"^[a-z][a-z0-9_]{0,60}_$"

AU = Annotated[str, StringConstraints(pattern=AU_PATTERN)]
Group = Annotated[str, StringConstraints(pattern=GROUP_PATTERN)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Side = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)]
Region = Literal["full", "upper", "middle", "lower"]
Scalar = Union[bool, int, float, str, None]
AUs = Annotated[list[AU], Field(min_length=1, max_length=MAX_AUS)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)


class Step(Strict):
    step: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")]
    cls: Annotated[str, StringConstraints(max_length=100)] = Field(alias="class")
    params: dict[str, Union[Scalar, list[Scalar]]] = {}
    fitted: dict[Annotated[str, StringConstraints(pattern=FITTED_PATTERN)], Scalar] = {}


class Pipeline(Strict):
    pipeline: bool = True
    steps: Annotated[list[Step], Field(min_length=1, max_length=8)]


PerAU = Annotated[list[dict[AU, Group]], Field(max_length=64)]


class Estimators(Strict):
    models: dict[Group, Pipeline]
    units: PerAU


class Intensity(Strict):
    units: PerAU
    calibrate: Literal["none", "median", "neutral"] = "none"


class Fingerprint(Strict):
    created: Optional[str] = None
    tensors: dict[str, Optional[str]] = {}


class Vote(Strict):
    members: Annotated[list[Name], Field(max_length=64)]
    fingerprints: Optional[list[Optional[Fingerprint]]] = None


class Unit(Strict):
    fold: Annotated[int, Field(ge=0, le=63)] = 0
    aus: AUs
    trainable: Optional[list[AU]] = None
    region: Region = "full"
    base: Optional[Group] = None


class LstmUnit(Unit):
    dims: Annotated[int, Field(ge=1, le=MAX_DIMS)]
    n_out: Annotated[int, Field(ge=1, le=MAX_AUS)]
    hidden: Annotated[int, Field(ge=1, le=MAX_HIDDEN)]
    bidirectional: bool = False


class Lstm(Strict):
    units: dict[Group, LstmUnit]


class FaceInput(Strict):
    region: Region = "full"
    size: Side
    resize_full: bool = False


class FaceRun(Strict):
    units: dict[Group, Unit]
    face_input: dict[Group, FaceInput]


class FtConfig(Strict):
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    head: Literal["per-au", "multilabel"]
    reinit: Literal["fc", "fc6-fc7", "head"]


class FtNetwork(Strict):
    input_size: Side


class Finetune(FaceRun):
    config: FtConfig
    network: FtNetwork


class Transfer(FaceRun):
    backbone: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    input_size: Side
    hidden: Annotated[list[Annotated[int, Field(ge=1, le=MAX_HIDDEN)]], Field(max_length=8)]
    dropout: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


#: the schema of each family of kinds, by the name a KindSpec gives
SCHEMAS = {"estimators": Estimators, "intensity": Intensity, "vote": Vote, "lstm": Lstm,
           "ft": Finetune, "transfer": Transfer, "faces": FaceRun}
