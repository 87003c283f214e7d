"""Training methods by name: what owns state that changes while a model trains.

Every method is one :class:`MethodEntry`: a factory ``(class_counts, **options) -> Method``, the options it
accepts with their defaults, and the classifier head it needs. A notebook names a method as a string,
optionally with options: ``"cdb_ce:tau=1.5,min_difficulty=0.01"`` (:class:`MethodRef`). Options are
checked against the method's real ones when the reference is made, so a misspelt ``tua=1`` fails at
once, listing the accepted names.

Method hyper-parameters belong to the method: deferred re-weighting's ``drw_epoch`` and ``drw_beta`` are
options of the DRW methods only, so a method that never reads them is never keyed on them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..losses import REQUIRED, build_loss, factory_options, loss_options
from .base import DeferredReweighting, Method
from .cdb import CDBMethod
from .difficulty_net import DifficultyNetMethod
from .intra_inter import ghm_method, intra_inter_method

__all__ = ["METHODS", "Method", "MethodEntry", "MethodRef", "build_method", "method_options", "parse_method",
           "reconstructed_from"]


@dataclass(frozen=True)
class MethodEntry:
    factory: Callable[..., Method]
    options: Mapping[str, Any]
    head: str = "linear"
    summary: str = ""
    reconstruction_of: str = ""  # whose method this rebuilds without their code or method text: shown wherever it is


def _loss_method(loss: str, *, drw: bool = False, head: str = "linear", summary: str = "",
                 fixed: Mapping[str, Any] | None = None) -> MethodEntry:
    """A method that is a loss (optionally with deferred re-weighting): its options are the loss's own."""
    options = {k: v for k, v in loss_options(loss).items() if k not in (fixed or {})}
    if drw:
        options.update(drw_epoch=REQUIRED, drw_beta=0.9999)

    def factory(class_counts, **given) -> Method:
        drw_options = {k: given.pop(k) for k in ("drw_epoch", "drw_beta") if k in given}
        built = build_loss(loss, class_counts, **{**(fixed or {}), **given})
        if drw:
            return DeferredReweighting(built, drw_options["drw_epoch"], drw_options.get("drw_beta", 0.9999))
        return Method(built)

    return MethodEntry(factory, options, head, summary)


def _class_method(cls, *, head: str = "linear", summary: str = "", **fixed) -> MethodEntry:
    options = {k: v for k, v in factory_options(cls).items() if k not in fixed}
    return MethodEntry(lambda class_counts, **given: cls(class_counts, **fixed, **given), options, head, summary)


METHODS: dict[str, MethodEntry] = {
    "ce": _loss_method("ce", summary="cross-entropy"),
    "focal": _loss_method("focal", summary="focal loss (Lin et al. 2017)"),
    "cb": _loss_method("cb", summary="class-balanced CE (Cui et al. 2019)"),
    "cb_focal": _loss_method("cb_focal", summary="class-balanced focal (Cui et al. 2019)"),
    "ce_drw": _loss_method("ce", drw=True, summary="CE with deferred re-weighting"),
    "ldam": _loss_method("ldam", head="normed", summary="LDAM (Cao et al. 2019)"),
    "ldam_drw": _loss_method("ldam", drw=True, head="normed", summary="LDAM-DRW (Cao et al. 2019)"),
    "balanced_softmax": _loss_method("balanced_softmax", summary="Balanced Softmax (Ren et al. 2020)"),
    "logit_adjust": _loss_method("logit_adjust", summary="logit-adjusted CE (Menon et al. 2021)"),
    "cdb_ce": _class_method(CDBMethod, summary="CDB loss with CE (Sinha et al. 2020)"),
    "cdb_focal": _class_method(CDBMethod, base="focal", summary="CDB loss with focal (Sinha et al. 2020)"),
    "cdb_ce_normalised": _class_method(CDBMethod, difficulty="normalised",
                                       summary="CDB-CE as Difficulty-Net's code feeds it (normalised difficulty)"),
    "difficulty_net": _class_method(DifficultyNetMethod, summary="Difficulty-Net, exact bi-level (Sinha & Ohashi 2023)"),
    "difficulty_net_as_released": _class_method(
        DifficultyNetMethod, mode="as_released", summary="Difficulty-Net as the released code trains it"),
    "ghm": MethodEntry(ghm_method, factory_options(ghm_method), summary="GHM-C (Li et al. 2019)"),
    "intra_inter": MethodEntry(intra_inter_method, factory_options(intra_inter_method),
                               summary="intra-/inter-category balance (reconstruction of Zhang et al. 2022)",
                               reconstruction_of="Zhang et al. (ICASSP 2022)"),
}


def reconstructed_from(name: str) -> str:
    """Whose method ``name`` (a plan name such as ``intra_inter:inter=false + crt``) rebuilds; "" for a method
    implemented from its paper's or its official code's text."""
    entry = METHODS.get(name.split(" + ")[0].partition(":")[0].strip())
    return entry.reconstruction_of if entry else ""


def _entry(name: str) -> MethodEntry:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def method_options(name: str) -> dict:
    """The options method ``name`` accepts, with their defaults (``REQUIRED`` where it needs a value)."""
    return dict(_entry(name).options)


@dataclass(frozen=True)
class MethodRef:
    """A method by name with the options that differ from its defaults (``"cdb_ce:tau=1.5"``)."""

    name: str
    options: tuple[tuple[str, Any], ...] = field(default=())

    @classmethod
    def make(cls, name: str, options: Mapping[str, Any] | None = None) -> "MethodRef":
        """Validate ``options`` against the method's own; options equal to the default are dropped."""
        accepted = method_options(name)
        options = dict(options or {})
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f"method {name!r} has no option(s) {unknown}; it accepts "
                             f"{sorted(accepted) or 'no options'}")
        kept = {k: v for k, v in options.items() if accepted[k] is REQUIRED or not _same(v, accepted[k])}
        return cls(name, tuple(sorted(kept.items())))

    @classmethod
    def parse(cls, entry: str, extra: Mapping[str, Any] | None = None) -> "MethodRef":
        """``"cdb_ce:tau=1.5,min_difficulty=0.01"``; ``extra`` adds options the method accepts (schedule-tied
        ones such as ``drw_epoch``), unless the entry sets them itself."""
        name, kwargs = parse_method(entry)
        accepted = method_options(name)
        merged = {k: v for k, v in (extra or {}).items() if k in accepted}
        return cls.make(name, {**merged, **kwargs})

    @property
    def kwargs(self) -> dict:
        return dict(self.options)

    @property
    def head(self) -> str:
        return _entry(self.name).head

    def missing(self) -> list[str]:
        return [k for k, v in method_options(self.name).items() if v is REQUIRED and k not in self.kwargs]

    def build(self, class_counts: Sequence[int]) -> Method:
        missing = self.missing()
        if missing:
            raise ValueError(f"method {self.name!r} needs option(s) {missing} (e.g. '{self.name}:{missing[0]}=...')")
        method = _entry(self.name).factory(class_counts, **self.kwargs)
        method.head = self.head
        return method

    def plain_step(self) -> bool:
        """Whether the method trains with the plain step (a loss on the logits), which ``torch.compile`` can take."""
        options = {**self.kwargs, **{name: 0 for name in self.missing()}}  # placeholders for schedule-tied values
        built = _entry(self.name).factory([20, 10, 5], **options)
        return type(built).compute_loss is Method.compute_loss

    def check(self) -> None:
        """Build once on dummy class counts, so bad option *values* fail before any data is loaded."""
        if not self.missing():
            self.build([20, 10, 5])

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_format(v)}" for k, v in self.options)


def _same(value, default) -> bool:
    """Equal as options: 1 and 1.0 are the same number; True and 1 are not the same option."""
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)
    if number(value) and number(default):
        return float(value) == float(default)
    return type(value) is type(default) and value == default


def _format(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_method(entry: str) -> tuple[str, dict]:
    """``"cdb_ce:tau=1.5,min_difficulty=0.01"`` -> ("cdb_ce", {"tau": 1.5, "min_difficulty": 0.01})."""
    import yaml

    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"a method is named by a non-empty string such as 'ce' or 'cdb_ce:tau=1.5', got {entry!r}")
    name, _, options = entry.strip().partition(":")
    kwargs = {}
    for option in filter(None, (o.strip() for o in options.split(","))):
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"method variant {entry!r}: options are written key=value, got {option!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    _entry(name)
    return name, kwargs


def build_method(name: str, class_counts: Sequence[int], **options) -> Method:
    """Build method ``name`` for a training set with ``class_counts`` (options checked against the method's)."""
    return MethodRef.make(name, options).build(class_counts)
