"""Notebook parameters: typed, validated, turned into run specs.

A notebook's ``parameters`` cell holds plain values (what papermill injects from
``params/<profile>/<notebook>.yaml``); :class:`ExperimentParams` checks their types once and
builds the :class:`~ltlib.experiment.RunSpec` of every (method, seed). A profile changes only
sizes and schedules, never which code runs.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .experiment import DataSpec, RunSpec
from .methods import parse_method
from .metrics import ShotThresholds
from .paths import ROOT
from .train import TrainConfig

PROFILE_NAMES = ("quick", "cpu-real", "paper")


class ParameterError(TypeError):
    """A notebook parameter has the wrong type or an unknown value."""


@dataclass
class ExperimentParams:
    profile: str = "quick"
    source: str = "digits"
    imbalance: float = 10
    protocol: str = "ldam"
    model: str = "small_cnn"
    methods: list = field(default_factory=lambda: ["ce"])
    seeds: list = field(default_factory=lambda: [0])
    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "multistep"
    milestones: list = field(default_factory=lambda: [10])
    gamma: float = 0.1
    warmup_epochs: int = 1
    drw_epoch: int = 10
    no_bias_decay: bool = False
    many_above: int = 60
    few_below: int = 20
    device: str = "cpu"
    amp: bool = False
    channels_last: bool = False

    @classmethod
    def from_namespace(cls, namespace: dict) -> "ExperimentParams":
        """Pick this class's fields out of a notebook's globals and validate them."""
        values = {f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.name in namespace}
        return cls(**values)

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            ok = {int: isinstance(value, int) and not isinstance(value, bool),
                  float: isinstance(value, (int, float)) and not isinstance(value, bool),
                  bool: isinstance(value, bool), str: isinstance(value, str), list: isinstance(value, list)}[hint]
            if not ok:
                raise ParameterError(f"parameter {f.name!r} must be {hint.__name__}, got {value!r} "
                                     f"({type(value).__name__}); fix it in the parameters cell or in "
                                     f"params/{self.profile}/<notebook>.yaml")
        if self.profile not in PROFILE_NAMES:
            raise ParameterError(f"unknown profile {self.profile!r}; choose one of {PROFILE_NAMES}")

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=float(self.lr), momentum=float(self.momentum),
                           weight_decay=float(self.weight_decay), nesterov=self.nesterov, schedule=self.schedule,
                           milestones=tuple(self.milestones), gamma=float(self.gamma), warmup_epochs=self.warmup_epochs,
                           drw_epoch=self.drw_epoch, no_bias_decay=self.no_bias_decay, device=self.device,
                           amp=self.amp, channels_last=self.channels_last)

    def data_spec(self, imbalance: float | None = None, protocol: str | None = None, source: str | None = None) -> DataSpec:
        return DataSpec(source or self.source, float(imbalance if imbalance is not None else self.imbalance),
                        protocol or self.protocol)

    def thresholds(self) -> ShotThresholds:
        return ShotThresholds(self.many_above, self.few_below)

    def specs(self, methods: list[str] | None = None, **data_overrides) -> list[RunSpec]:
        """One spec per (method, seed), methods in the order given."""
        specs = []
        for entry in methods or self.methods:
            name, kwargs = parse_method(entry)
            specs += [RunSpec(name, self.data_spec(**data_overrides), self.model, self.train_config(), seed,
                              method_kwargs=kwargs, thresholds=self.thresholds(), label=entry if kwargs else None)
                      for seed in self.seeds]
        return specs


def load_profile(notebook: str, profile: str) -> dict:
    """The values ``params/<profile>/<notebook>.yaml`` injects (for scripts and tests)."""
    path = ROOT / "params" / profile / f"{notebook}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no parameters for notebook {notebook!r} in profile {profile!r}: {path}")
    return yaml.safe_load(path.read_text()) or {}
