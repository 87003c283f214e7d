"""Notebook parameters: one typed configuration class per notebook, the single place each is declared.

A notebook's configuration (:class:`NotebookConfig` subclass, in :mod:`ltlib.studies`) declares every
parameter once, with its type, its default (the ``quick`` profile) and a one-line description. From it:

* the notebook's ``parameters`` cell is generated (:meth:`NotebookConfig.parameters_cell`; a test checks
  that every notebook's cell is what its class generates, ``python -m ltlib sync-parameters`` rewrites it),
  so papermill recognises every parameter;
* ``params/<profile>/<notebook>.yaml`` and ``papermill -p`` overrides are validated before a notebook runs
  (:meth:`NotebookConfig.load`, used by ``python -m ltlib notebook`` and the sweep runner): an unknown
  name is an error that lists the valid ones, every list element is type-checked, empty lists are rejected;
* inside the kernel, :meth:`NotebookConfig.from_notebook` builds the configuration from the values of the
  declared names and from what papermill injected (the ``injected-parameters`` cell), so a parameter
  passed to papermill under a wrong name fails there too, instead of being silently ignored.
"""
from __future__ import annotations

import ast
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .paths import ROOT

PROFILES = ("quick", "cpu-real", "paper")


class ParameterError(TypeError):
    """A notebook parameter with an unknown name, a wrong type or a value out of range."""


def param(default, doc: str, **checks):
    """A declared parameter: default (quick profile), one-line description, optional checks (``min=``, ``choices=``)."""
    kwargs = {"default_factory": (lambda d=default: list(d))} if isinstance(default, list) else {"default": default}
    return dataclasses.field(metadata={"doc": doc, **checks}, **kwargs)


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is list:
        (inner,) = typing.get_args(hint)
        return f"list[{_type_name(inner)}]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in typing.get_args(hint))
    return hint.__name__


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    raise TypeError(f"unsupported parameter type {hint!r}")


def _list_hint(hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_args(hint)[0] if typing.get_origin(hint) is list else None


@dataclasses.dataclass
class NotebookConfig:
    """Parameters every notebook has; subclasses add their own (see :func:`param`)."""

    NOTEBOOK: ClassVar[str] = ""

    profile: str = param("quick", "quick | cpu-real | paper: the scale this notebook runs at", choices=PROFILES)

    # ------------------------------------------------------------------------------------------ declaration
    @classmethod
    def declared(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in cls.declared()]

    @classmethod
    def hints(cls) -> dict:
        return typing.get_type_hints(cls)

    @classmethod
    def defaults(cls) -> dict:
        out = {}
        for f in cls.declared():
            out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        return out

    @classmethod
    def parameters_cell(cls) -> str:
        """The source of the notebook's ``parameters`` cell: every parameter, typed, with its quick default."""
        hints, defaults = cls.hints(), cls.defaults()
        # papermill's parser skips a line with more than one "=", so an "=" inside a value (a method option such as
        # 'cdb_ce:tau=1') is written as the escape \x3d: the same string to Python, one "=" on the line to papermill.
        values = [repr(defaults[f.name]).replace("=", "\\x3d") for f in cls.declared()]
        lines = [f"{f.name}: {_type_name(hints[f.name])} = {value}" for f, value in zip(cls.declared(), values)]
        width = min(max(len(line) for line in lines), 44) + 2
        body = [f"{line:<{width}}# {f.metadata['doc']}" if len(line) < width else f"{line}  # {f.metadata['doc']}"
                for line, f in zip(lines, cls.declared())]
        if any("\\x3d" in v for v in values):
            body.insert(0, "# '\\x3d' below is '=' (papermill reads one '=' per line)")
        return "\n".join(body)

    # ------------------------------------------------------------------------------------------ validation
    def __post_init__(self):
        hints = self.hints()
        where = f"fix it in the parameters cell or in params/{self.profile}/{self.NOTEBOOK}.yaml" \
            if isinstance(self.profile, str) else "fix it in the parameters cell"
        for f in self.declared():
            value, hint = getattr(self, f.name), hints[f.name]
            if not _matches(value, hint):
                raise ParameterError(f"{self.NOTEBOOK}: parameter {f.name!r} must be {_type_name(hint)}, got "
                                     f"{value!r} ({type(value).__name__}); {where}")
            element = _list_hint(hint)
            if element is not None and isinstance(value, list):
                if not value and not f.metadata.get("empty_ok", False):
                    raise ParameterError(f"{self.NOTEBOOK}: parameter {f.name!r} is an empty list; give at least one "
                                         f"value ({f.metadata['doc']})")
                for item in value:
                    if not _matches(item, element):
                        raise ParameterError(f"{self.NOTEBOOK}: parameter {f.name!r} must list {_type_name(element)} "
                                             f"values, got {item!r} ({type(item).__name__}) in {value!r}; {where}")
            for item in (value if isinstance(value, list) else [value]):
                self._check_range(f, item, where)
        self.check()

    def _check_range(self, f: dataclasses.Field, value, where: str) -> None:
        if value is None:
            return
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ParameterError(f"{self.NOTEBOOK}: parameter {f.name!r} is {value!r}; choose one of {tuple(choices)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ParameterError(f"{self.NOTEBOOK}: parameter {f.name!r} must be finite, got {value}; {where}")
        minimum = f.metadata.get("min")
        if minimum is not None and isinstance(value, (int, float)) and value < minimum:
            raise ParameterError(f"{self.NOTEBOOK}: parameter {f.name!r} must be >= {minimum}, got {value}; {where}")

    def check(self) -> None:
        """Checks across parameters (a subclass's method names, options, ...); raise ParameterError."""

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_values(cls, values: dict, *, origin: str = "the given parameters"):
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ParameterError(f"{cls.NOTEBOOK}: unknown parameter(s) {unknown} in {origin}; the valid ones are "
                                 f"{cls.names()}")
        return cls(**values)

    @classmethod
    def load(cls, profile: str, overrides: dict | None = None, *, params_dir: Path | None = None):
        """Defaults, then ``params/<profile>/<notebook>.yaml``, then ``overrides`` (as papermill -p)."""
        if profile not in PROFILES:
            raise ParameterError(f"unknown profile {profile!r}; choose one of {PROFILES}")
        path = (params_dir or ROOT / "params") / profile / f"{cls.NOTEBOOK}.yaml"
        values = read_params_file(path) if path.exists() else {"profile": profile}
        if values.get("profile", profile) != profile:
            raise ParameterError(f"{path} sets profile {values['profile']!r} but lives in params/{profile}/")
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ParameterError(f"{cls.NOTEBOOK}: unknown parameter(s) {unknown} in {path}; the valid ones are "
                                 f"{cls.names()}")
        merged = {**values, **(overrides or {}), "profile": profile}
        return cls.from_values(merged, origin=f"{path} and the overrides")

    @classmethod
    def from_notebook(cls):
        """Inside a running notebook: the declared names' values, after checking what papermill injected."""
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            raise RuntimeError("from_notebook() reads a notebook's parameters; outside Jupyter use load()")
        namespace = shell.user_ns
        injected = injected_names(namespace.get("In", []))
        unknown = sorted(injected - set(cls.names()))
        if unknown:
            raise ParameterError(f"{cls.NOTEBOOK}: papermill injected unknown parameter(s) {unknown}; the valid ones "
                                 f"are {cls.names()}")
        missing = [name for name in cls.names() if name not in namespace]
        if missing:
            raise ParameterError(f"{cls.NOTEBOOK}: parameter(s) {missing} are not set; run the parameters cell first")
        return cls(**{name: namespace[name] for name in cls.names()})

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in self.declared()}


def read_params_file(path: Path) -> dict:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as error:
        raise ParameterError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ParameterError(f"{path} must map parameter names to values, got {type(values).__name__}")
    return values


def injected_names(history: list[str]) -> set[str]:
    """Names assigned by papermill's injected cell (its source starts with '# Parameters'), from IPython's ``In``."""
    names: set[str] = set()
    for source in history:
        if isinstance(source, str) and source.lstrip().startswith("# Parameters"):
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            names = {target.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                     for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                     if isinstance(target, ast.Name)}
    return names


def parse_value(text: str) -> Any:
    """A ``-p name value`` value as papermill reads it (numbers, booleans; YAML for lists)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ParameterError(f"the value {text!r} is not valid YAML ({problem}); quote a list as '[0, 1]'") from None
